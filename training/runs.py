"""The run folder of a training run (``cfg.out``): where each stage's files live, and its finished weights.

Layout, one folder per stage::

    <stage>/checkpoint.pt                       latest resumable state (atomic; training/checkpoint.py)
    <stage>/weights.safetensors                 the trained net, once the stage has finished
    <stage>/weights_step<NNNNNNN>.safetensors   the net at each evaluation
    <stage>/metrics.jsonl                       one JSON object per logged step and per evaluation
    <stage>/samples/                            dev images (low | output | target) at each evaluation

``training/loop.py`` writes it; ``training/export.py`` turns a finished one into a bundle.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from kind_serve.model import KinD

WEIGHTS = "weights.safetensors"


def stage_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / name


def weights_path(run_dir: str | Path, name: str) -> Path:
    """The finished weights of stage ``name``."""
    return stage_dir(run_dir, name) / WEIGHTS


def step_weights_path(run_dir: str | Path, name: str, step: int) -> Path:
    return stage_dir(run_dir, name) / f"weights_step{step:07d}.safetensors"


def metrics_path(run_dir: str | Path, name: str) -> Path:
    return stage_dir(run_dir, name) / "metrics.jsonl"


def samples_dir(run_dir: str | Path, name: str) -> Path:
    return stage_dir(run_dir, name) / "samples"


def stage_module(kind: KinD, name: str) -> torch.nn.Module:
    """The network stage ``name`` trains."""
    return {"decom": kind.decom, "adjust": kind.adjustment, "restore": kind.restoration}[name]


def load_finished(
    kind: KinD, run_dir: str | Path, name: str, base: KinD | None = None, step: int | None = None
) -> int | None:
    """Load stage ``name``'s weights from ``run_dir`` into ``kind``: its snapshot at ``step`` when it has one,
    else its finished weights, else (fine-tuning, a stage this run never started) the ``base`` bundle's.
    Returns the snapshot's step when one was loaded.

    A stage that has started but not finished has no weights to export: naming its snapshots is the answer, not
    the base bundle's net, which would pass for the run's."""
    snapshot = None if step is None else step_weights_path(run_dir, name, step)
    path = snapshot if snapshot is not None and snapshot.is_file() else weights_path(run_dir, name)
    if path.is_file():
        stage_module(kind, name).load_state_dict(load_file(str(path)))
        return step if path == snapshot else None
    started = (stage_dir(run_dir, name) / "checkpoint.pt").is_file()
    if base is not None and not started:
        stage_module(kind, name).load_state_dict(stage_module(base, name).state_dict())
        return None
    snapshots = sorted(p.name for p in stage_dir(run_dir, name).glob("weights_step*.safetensors"))
    hint = f"; its snapshots: {', '.join(snapshots)} (kind export --step N)" if snapshots else ""
    raise FileNotFoundError(f"{path}: stage {name!r} has not finished; train it first (kind train {name}){hint}")
