"""Training in bf16 (``precision``): the networks under autocast, the losses and the weights in float32.

What a user notices: with ``precision=bf16`` a run's first loss is the float32 run's to within a percent, its
weights stay float32, and ``auto`` picks bf16 only where the device runs it natively.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kind_serve.model import KinD
from kind_serve.model.decom import Decomposition
from kind_serve.training import precision
from kind_serve.training.config import load_config
from kind_serve.training.loop import train_stage

from .conftest import tiny_overrides


def _first_loss(tiny_sice: Path, out: Path, base: Path, setting: str) -> float:
    cfg = load_config(overrides=[*tiny_overrides(tiny_sice, out, steps=1), f"init={base}", f"precision={setting}"])
    train_stage(cfg, "restore")
    rows = [json.loads(line) for line in (out / "restore" / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if "loss" in r)


def test_bf16_training_tracks_float32_and_keeps_float32_weights(tiny_sice: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    torch.manual_seed(0)
    KinD().save(base)
    fp32 = _first_loss(tiny_sice, tmp_path / "fp32", base, "fp32")
    bf16 = _first_loss(tiny_sice, tmp_path / "bf16", base, "bf16")
    assert bf16 == pytest.approx(fp32, rel=0.01)
    weights = load_file(str(tmp_path / "bf16" / "restore" / "weights.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_autocast_hands_back_float32_of_the_same_kind() -> None:
    kind = KinD().eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out, want = precision.Autocast(kind.decom)(x), kind.decom(x)
    assert isinstance(out, Decomposition) and out.reflectance.dtype == torch.float32
    assert float((out.reflectance - want.reflectance).abs().max()) < 0.05  # bf16 keeps 8 bits


def test_auto_is_bf16_only_where_the_device_runs_it_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_native", lambda p, native=native: native)
        assert precision.training_precision("auto", cpu) == expected
    assert precision.training_precision("fp32", cpu) == "fp32"
    assert precision.training_precision("bf16", cpu) == "bf16"
