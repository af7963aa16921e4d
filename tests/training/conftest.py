"""A tiny multi-exposure dataset in the SICE layout, so training tests run without ../shared."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXPOSURES = (0.05, 0.1, 0.2, 0.45, 0.9)


def make_sice(root: Path, scenes: int = 4, size: int = 48, dev: int = 1) -> Path:
    rng = np.random.default_rng(0)
    rows, align = [], []
    for s in range(1, scenes + 1):
        scene = f"s{s:04d}"
        (root / scene).mkdir(parents=True)
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = np.stack([0.3 + 0.5 * xx, 0.3 + 0.5 * yy, 0.5 + 0.3 * np.sin(6 * xx * yy + s)], -1)
        base = base * (0.6 + 0.4 * (rng.random((size, size, 1)) > 0.5))
        for k, exposure in enumerate(EXPOSURES, start=1):
            img = np.clip(base * exposure / 0.45 * 0.5, 0, 1)
            arr = (img * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(root / scene / f"{k}.jpg", quality=95)
            split = "dev" if s > scenes - dev else "train"
            rows.append(
                [scene, k, f"{k}.jpg", f"{arr.mean() / 255:.4f}", f"{(arr >= 250).any(-1).mean():.4f}", "0", split]
            )
            align.append([scene, k, 0, 0, "ref" if k == 4 else "ok"])
    with (root / "scenes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scene_id", "k", "source_file", "mean_intensity", "clipped_fraction", "dark_fraction", "split"])
        w.writerows(rows)
    with (root / "alignment.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scene_id", "k", "shift_dy", "shift_dx", "status"])
        w.writerows(align)
    return root


@pytest.fixture(scope="session")
def tiny_sice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sice(tmp_path_factory.mktemp("sice"))


def tiny_overrides(data: Path, out: Path, steps: int = 2) -> list[str]:
    """Config overrides for a seconds-long run on the tiny dataset."""
    return [
        f"data={data}",
        f"out={out}",
        "threads=1",
        "checkpoint_every=1",
        f"eval_every={steps}",
        "eval_pairs=1",
        "eval_size=48",
        "log_every=1",
        "pairs.target_mean=0.25",
        "pairs.min_target_mean=0.1",
        f"stages.decom.steps={steps}",
        f"stages.adjust.steps={steps}",
        f"stages.restore.steps={steps}",
        "stages.decom.batch_size=2",
        "stages.adjust.batch_size=2",
        "stages.restore.batch_size=2",
        "stages.decom.patch_size=32",
        "stages.adjust.patch_size=32",
        "stages.restore.patch_size=32",
    ]
