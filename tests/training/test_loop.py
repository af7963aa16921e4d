"""The training loop end to end on a tiny dataset: all stages, export, eval, kill -9 + resume, and DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kind_serve.model import KinD
from kind_serve.training.checkpoint import load_checkpoint
from kind_serve.training.cli import main as cli
from kind_serve.training.config import load_config
from kind_serve.training.loop import train_stage

from .conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_all_stages_export_and_eval(tiny_sice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert cli(["train", "all", *sum((["-o", o] for o in tiny_overrides(tiny_sice, run)), [])]) == 0
    for stage in ("decom", "adjust", "restore"):
        rows = _metrics(run / stage / "metrics.jsonl")
        assert [r["step"] for r in rows if "loss" in r] == [1, 2]
        assert any("eval" in r for r in rows)
        assert (run / stage / "weights.safetensors").is_file()
    assert list((run / "restore" / "samples").glob("*.png"))

    bundle = tmp_path / "bundle"
    assert cli(["export", str(run), "--out", str(bundle)]) == 0
    kind = KinD.load(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["training"]["steps"] == {"decom": 2, "adjust": 2, "restore": 2}
    assert manifest["training"]["config"]["data"] == str(tiny_sice)
    assert set(manifest["training"]["stage_configs"]) == {"decom", "adjust", "restore"}
    assert "non-commercial" in manifest["provenance"]["terms"]
    assert kind.restoration_trained
    # auto α aims at the training targets' median brightness (about 0.25 in the tiny set), not a constant
    assert 0.15 < kind.defaults.exposure_target < 0.35

    capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(bundle), "--data", str(tiny_sice), "--size", "48"]) == 0
    table = capsys.readouterr().out
    for method in ("kind (auto α)", "kind (oracle α, uses GT)", "identity", "gamma (mean→0.45)"):
        assert method in table


def test_fine_tuning_starts_from_a_bundle_and_exports_its_untrained_stages(tiny_sice: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    KinD().save(base, training={"note": "the starting point"})
    run = tmp_path / "ft"
    cfg = load_config(overrides=[*tiny_overrides(tiny_sice, run, steps=1), f"init={base}"])
    # restoration needs a finished decomposition: the bundle's, since this run never trains one
    train_stage(cfg, "restore")
    assert not (run / "decom").exists()

    bundle = tmp_path / "bundle"
    assert cli(["export", str(run), "--out", str(bundle)]) == 0
    start, tuned = KinD.load(base), KinD.load(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["training"]["steps"] == {"restore": 1}
    assert manifest["training"]["init"]["training"]["note"] == "the starting point"

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    assert same(start.decom, tuned.decom) and same(start.adjustment, tuned.adjustment), "the bundle's, unchanged"
    assert not same(start.restoration, tuned.restoration), "the restoration net was fine-tuned"


def test_refuses_to_overwrite_a_run_without_resume(tiny_sice: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=tiny_overrides(tiny_sice, tmp_path / "run", steps=1))
    train_stage(cfg, "decom")
    with pytest.raises(FileExistsError, match="--resume"):
        train_stage(cfg, "decom")
    with pytest.raises(FileNotFoundError, match="kind train decom"):
        train_stage(load_config(overrides=tiny_overrides(tiny_sice, tmp_path / "other", steps=1)), "restore")


def _train_cmd(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    overrides = [o for o in tiny_overrides(data, out, steps) if not o.startswith("eval_every")] + [
        f"eval_every={10**6}"
    ]
    return [sys.executable, "-m", "kind_cli", "train", "decom", *extra, *sum((["-o", o] for o in overrides), [])]


def test_kill_9_then_resume_loses_at_most_the_steps_since_the_last_checkpoint(tiny_sice: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(tiny_sice, run, 400), cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = load_checkpoint(run / "decom") if (run / "decom" / "checkpoint.pt").exists() else None
        if state is not None and state["step"] >= 5:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run / "decom")["step"]
    assert 5 <= killed_at < 400, "the run must have been killed mid-way"
    logged = [r["step"] for r in _metrics(run / "decom" / "metrics.jsonl") if "loss" in r]
    assert max(logged) - killed_at <= 1, "checkpoint_every=1: at most the step in flight is lost"

    steps = killed_at + 3
    resumed = subprocess.run(
        _train_cmd(tiny_sice, run, steps, "--resume"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(run / "decom")["step"] == steps
    after = [r["step"] for r in _metrics(run / "decom" / "metrics.jsonl") if "loss" in r]
    assert after[-3:] == [killed_at + 1, killed_at + 2, steps]


def test_torchrun_two_process_gloo(tiny_sice: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = _train_cmd(tiny_sice, run, 3)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
    done = subprocess.run(torchrun, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(run / "decom")
    assert state["step"] == 3
    rows = [r for r in _metrics(run / "decom" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3], "only rank 0 logs"


def test_a_run_still_training_exports_from_a_dev_check_snapshot_not_from_its_init(
    tiny_sice: Path, tmp_path: Path
) -> None:
    """A fine-tune in progress has no finished restoration weights: export must not hand back the init bundle's
    net under the run's name; ``--step N`` takes the snapshot of the dev check at step N."""
    base = tmp_path / "base"
    KinD().save(base)
    run = tmp_path / "ft"
    cfg = load_config(overrides=[*tiny_overrides(tiny_sice, run, steps=2), f"init={base}", "eval_every=1"])
    train_stage(cfg, "restore")
    (run / "restore" / "weights.safetensors").unlink()  # as while the run goes on

    with pytest.raises(FileNotFoundError, match="weights_step0000001.safetensors"):
        cli(["export", str(run), "--out", str(tmp_path / "none")])
    bundle = tmp_path / "bundle"
    assert cli(["export", str(run), "--out", str(bundle), "--step", "1"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["training"]["steps"] == {"restore": 1}
    snapshot = load_file(str(run / "restore" / "weights_step0000001.safetensors"))
    exported = KinD.load(bundle).restoration.state_dict()
    assert all(torch.equal(snapshot[k], exported[k]) for k in snapshot), "the step-1 snapshot, not the init"
    assert not all(torch.equal(v, KinD.load(base).restoration.state_dict()[k]) for k, v in snapshot.items())
