"""The GPU training path: batches drawn by worker processes, the packed data set, the time plan, the one command."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kind_serve.model import KinD
from kind_serve.training.config import NoiseConfig, PairRules
from kind_serve.training.data import StepBatches, iterate_batches, sice_pairs

from ..conftest import require_shared

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import gpu_plan  # noqa: E402
import pack_sice  # noqa: E402


def _draw(pairs: list, workers: int, steps: range, repeat: int = 1) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    noise = NoiseConfig(darken_probability=0.8, keep_highlight_probability=0.6, stretch="degraded")
    plan = StepBatches(pairs, batch=3, patch=32, noise=noise, seed=4, stage_index=2)
    # the generator's next draw stands for what the stage's loss takes from it after sampling
    return [(low, high, float(rng.random())) for low, high, rng in iterate_batches(plan, steps, workers, repeat=repeat)]


def test_workers_draw_the_batches_the_training_process_draws(tiny_sice: Path) -> None:
    pairs = sice_pairs(tiny_sice, "train", PairRules(target_mean=0.25, min_target_mean=0.1))
    inline, parallel = _draw(pairs, 0, range(5, 11)), _draw(pairs, 2, range(5, 11))
    assert len(parallel) == 6
    for (a_low, a_high, a_next), (b_low, b_high, b_next) in zip(inline, parallel, strict=True):
        assert torch.equal(a_low, b_low) and torch.equal(a_high, b_high)
        assert a_next == b_next, "the loss must continue the step's generator where sampling left it"
    assert not torch.equal(inline[0][0], inline[1][0]), "each step draws its own batch"


def test_repeated_batches_are_turned_copies_and_resume_where_they_left_off(tiny_sice: Path) -> None:
    pairs = sice_pairs(tiny_sice, "train", PairRules(target_mean=0.25, min_target_mean=0.1))
    once = _draw(pairs, 0, range(0, 4))
    repeated = _draw(pairs, 0, range(0, 12), repeat=3)
    assert len(repeated) == 12
    for step, (low, high, _) in enumerate(repeated):
        base_low, base_high, _ = once[step // 3]  # batch step // 3: consecutive batches, every pair in turn
        turn = step % 3  # 0: as drawn, 1 and 2: rotated by 90° and 180°
        assert torch.equal(low, torch.rot90(base_low, turn, dims=(-2, -1)))
        assert torch.equal(high, torch.rot90(base_high, turn, dims=(-2, -1)))
    assert len({round(r, 12) for *_, r in repeated}) == 12, "each step has its own generator"
    resumed = _draw(pairs, 2, range(5, 12), repeat=3)
    for a, b in zip(repeated[5:], resumed, strict=True):
        assert torch.equal(a[0], b[0]) and a[2] == b[2]


def _tiny_rules(tmp_path: Path) -> Path:
    config = tmp_path / "rules.yaml"
    config.write_text("pairs: {target_mean: 0.25, min_target_mean: 0.1}\n")
    return config


def test_pack_keeps_exactly_the_frames_the_pairs_use(tiny_sice: Path, tmp_path: Path) -> None:
    config = _tiny_rules(tmp_path)
    summary = pack_sice.pack(tiny_sice, tmp_path / "pack", config, max_mib=45)
    rules = PairRules(target_mean=0.25, min_target_mean=0.1)
    for split in ("train", "dev"):
        source = [
            (p.low.relative_to(tiny_sice), p.high.relative_to(tiny_sice)) for p in sice_pairs(tiny_sice, split, rules)
        ]
        packed = sice_pairs(tmp_path / "pack", split, rules)
        assert [(p.low.relative_to(tmp_path / "pack"), p.high.relative_to(tmp_path / "pack")) for p in packed] == source
        for p in packed:  # byte for byte: nothing re-encoded
            assert p.low.read_bytes() == (tiny_sice / p.low.relative_to(tmp_path / "pack")).read_bytes()
    jpgs = list((tmp_path / "pack").rglob("*.jpg"))
    assert len(jpgs) == summary["frames"] < len(list(tiny_sice.rglob("*.jpg"))), "unused exposures are left out"
    with (tmp_path / "pack" / "scenes.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(jpgs)
    assert json.loads((tmp_path / "pack" / "PACK.json").read_text())["frames"] == len(jpgs)


def test_pack_over_the_size_limit_is_refused(tiny_sice: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="over the 0.001 MiB limit"):
        pack_sice.pack(tiny_sice, tmp_path / "pack", _tiny_rules(tmp_path), max_mib=0.001)


def _log(path: Path, rows: list[tuple[int, float]]) -> Path:
    path.write_text("".join(json.dumps({"step": s, "loss": 0.1, "time": t}) + "\n" for s, t in rows))
    return path


def test_plan_fills_the_budget_at_the_measured_speed(tmp_path: Path) -> None:
    # 10 steps/s once running; the leg took 20 s for 100 steps, so 10 s of it was start-up and evaluation
    metrics = _log(tmp_path / "m.jsonl", [(10, 100.0), (50, 104.0), (100, 109.0)])
    plan = gpu_plan.plan(metrics, done=100, leg_seconds=20, budget=100, cap=10_000, safety=1.0)
    assert plan == 100 + 10 * (100 - 20 - 10)
    assert gpu_plan.plan(metrics, done=100, leg_seconds=20, budget=100, cap=500, safety=1.0) == 500
    assert gpu_plan.plan(metrics, done=100, leg_seconds=20, budget=25, cap=10_000, safety=1.0) == 100


def test_plan_without_two_log_lines_uses_the_whole_leg(tmp_path: Path) -> None:
    metrics = _log(tmp_path / "m.jsonl", [(10, 100.0)])
    assert gpu_plan.plan(metrics, done=10, leg_seconds=5, budget=30, cap=1000, safety=1.0) == 10 + 2 * (30 - 5 - 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_stage_trains_and_resumes_on_the_gpu_with_workers(tiny_sice: Path, tmp_path: Path) -> None:
    """The GPU path of the loop: batches from worker processes, repeats, the dev check and resume on CUDA."""
    from kind_serve.training.cli import main as cli

    from .conftest import tiny_overrides

    run = tmp_path / "run"
    sets = [*tiny_overrides(tiny_sice, run), "device=cuda", "workers=2", "stages.restore.repeat=2"]
    assert cli(["train", "all", *sum((["-o", o] for o in sets), [])]) == 0
    more = [*sets, "stages.restore.steps=4"]
    assert cli(["train", "restore", "--resume", *sum((["-o", o] for o in more), [])]) == 0
    assert cli(["export", str(run), "--out", str(tmp_path / "bundle")]) == 0
    assert KinD.load(tmp_path / "bundle").restoration_trained


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_gpu_train_tiny_schedule_end_to_end(tmp_path: Path) -> None:
    """``scripts/gpu_train.sh --tiny``: the GPU command on the CPU, from a real pack to a loadable bundle.

    About 4 minutes on two idle cores (10 on two busy ones): nine Python processes start, each importing torch.
    """
    source = require_shared("datasets", "sice-sequences")
    pack = tmp_path / "pack"
    pack_sice.pack(source, pack, REPO / "configs" / "gpu.yaml", max_mib=45)
    out = tmp_path / "out"
    env = os.environ | {"KIND_PACK": str(pack), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_train.sh"), str(out), "--tiny"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kind = KinD.load(out / "bundle")
    assert kind.restoration_trained
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("decom", "adjust", "restore"):
        assert metrics["schedule"][stage]["steps"] >= 2
    assert set(metrics["dev_paper"]) >= {"kind (auto α)", "identity"}
    assert np.isfinite(metrics["dev_paper"]["kind (auto α)"]["psnr"])
    assert "mean 0.01" in metrics["dev_dark_photo"]["kind (auto α)"]
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["metrics"]["schedule"] == metrics["schedule"]
    assert all(f.stat().st_size <= 16 * 2**20 for f in (out / "bundle").iterdir())
