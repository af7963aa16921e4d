"""Installing KinD Serve claims no generic top-level module names: only ``kind_serve.*`` and ``kind_cli``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_everything_under_kind_serve(tmp_path: Path) -> None:
    # built from a copy of what the Docker image copies, so no build/ is left in (or reused from) the checkout
    source = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for name in ("kind_cli", "model", "service", "training"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    # the same build the Docker image installs from (no build isolation: setuptools is already here)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        check=True,
        capture_output=True,
        cwd=source,
    )
    (wheel,) = tmp_path.glob("kind_serve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"kind_serve", "kind_cli"}
    # the three packages, their subpackages and the demo page all made it in
    for path in (
        "kind_serve/model/kind.py",
        "kind_serve/service/app.py",
        "kind_serve/service/routes/enhance.py",
        "kind_serve/service/static/index.html",
        "kind_serve/training/loop.py",
    ):
        assert path in names
    assert "kind_serve/__init__.py" not in names  # a namespace package: nothing to collide with
