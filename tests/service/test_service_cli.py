"""``kind serve`` as a process: refuses bad checkpoints and settings; SIGTERM drains and exits 0."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from kind_serve.service.__main__ import main
from tests.servers import kind_serve, wait_ready

from .conftest import free_port, image_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_missing_checkpoint_is_refused_with_its_path(tmp_path, capsys) -> None:
    assert main(["serve", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_corrupt_bundle_is_refused_naming_the_file(bundle, tmp_path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    target = next(broken.glob("decom*.safetensors"))
    target.write_bytes(target.read_bytes()[:1000])
    assert main(["serve", "--checkpoint", str(broken)]) == 2
    assert target.name in capsys.readouterr().err


def test_invalid_options_are_refused(bundle, capsys) -> None:
    assert main(["serve", "--checkpoint", str(bundle), "--max-batch-size", "0"]) == 2
    assert "max_batch_size" in capsys.readouterr().err


def test_sigterm_drains_in_flight_requests_and_exits_zero(bundle) -> None:
    port = free_port()
    env = {"OMP_NUM_THREADS": "1", "KIND_SHUTDOWN_GRACE_S": "20", "KIND_WARMUP": "false"}
    args = ("--checkpoint", str(bundle), "--device", "cpu")
    proc = kind_serve(port, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout=60)
        result: dict = {}
        big = image_bytes(320, 320, seed=31)  # a few seconds of CPU work in 64-pixel tiles

        def request() -> None:
            result["response"] = httpx.post(f"{url}/enhance?alpha=2", content=big, timeout=60)

        worker = threading.Thread(target=request)
        worker.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        worker.join(60)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    response = result["response"]
    assert response.status_code == 200  # admitted before SIGTERM: finished, not cut off
    assert "server" not in response.headers  # no version banner
    assert proc.returncode == 0, output
    assert '"msg": "stopped"' in output


def test_a_tile_size_the_bundle_overlap_does_not_fit_is_refused_at_start_up(random_bundle, capsys) -> None:
    # the bundle's overlap is 64: 72-px tiles cannot advance past it (origins are rounded to 16 px)
    assert main(["serve", "--checkpoint", str(random_bundle), "--tile-size", "72", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "KIND_TILE_SIZE (--tile-size) to at least 128" in err


def test_the_app_refuses_the_same_tiling_at_start_up(random_bundle) -> None:
    from fastapi.testclient import TestClient

    from kind_serve.service.app import create_app
    from kind_serve.service.config import Settings

    settings = Settings(checkpoint=random_bundle, device="cpu", tile_size=72, warmup=False, json_logs=False)
    with (
        pytest.raises(ValueError, match=r"KIND_TILE_SIZE \(--tile-size\) to at least 128"),
        TestClient(create_app(settings)),
    ):
        pass


def test_every_setting_but_the_secrets_is_an_option_with_its_variable_and_default(capsys) -> None:
    from kind_serve.service.config import Settings

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, info in Settings.model_fields.items():
        option = f"--{name.replace('_', '-')}"
        if name == "auth_tokens" or "SecretStr" in str(info.annotation):
            assert option not in text  # tokens and keys never on a command line
        else:
            assert option in text and f"KIND_{name.upper()}" in text
    assert "(KIND_MAX_BATCH_SIZE; default: 8)" in text


def test_the_smallest_tile_start_up_accepts_serves_an_upload_in_tiles(random_bundle) -> None:
    from fastapi.testclient import TestClient

    from kind_serve.service.app import create_app
    from kind_serve.service.config import Settings

    settings = Settings(checkpoint=random_bundle, device="cpu", tile_size=128, warmup=False, json_logs=False)
    with TestClient(create_app(settings)) as client:  # 6 tiles of 128 px, 64-px overlaps (the bundle's)
        response = client.post("/enhance?alpha=2", content=image_bytes(200, 150, seed=5))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_the_settings_tables_document_every_setting_and_nothing_else() -> None:
    import re
    from pathlib import Path

    from kind_serve.service.config import Settings

    docs = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    section = docs.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `KIND_([A-Z_]+)` \|", section, re.M))
    assert rows == {name.upper() for name in Settings.model_fields}
    assert len(Settings.model_fields) <= 30  # settings only where an operator needs them
