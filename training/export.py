"""Turn a finished training run (its folder: :mod:`training.runs`) into the checkpoint bundle the service loads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kind_serve.model import InferenceDefaults, KinD

from .checkpoint import load_checkpoint
from .config import STAGES, TrainConfig, config_from_dict
from .data import load_pairs
from .runs import load_finished

SICE_PROVENANCE = {
    "dataset": "SICE multi-exposure sequences (Cai, Gu, Zhang, IEEE TIP 2018), 512×512 JPEG as released in "
    "the Zero-DCE++ training set (Li-Chongyi/Zero-DCE_extension), regrouped into scenes",
    "split": "train split of sice-sequences/scenes.csv (dev scenes held out)",
    "terms": "research use only; the Zero-DCE release states academic, non-commercial use (CC BY-NC 4.0). "
    "These weights inherit those terms.",
}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def exposure_target(cfg: TrainConfig) -> float:
    """Auto-α target: the median brightness of the training targets, so "auto" means "like the training data"."""
    pairs = load_pairs(cfg.data, cfg.data_format, "train", cfg.pairs)
    means = []
    for path in sorted({p.high for p in pairs}):
        with Image.open(path) as im:
            means.append(float(np.asarray(im.convert("RGB")).mean()) / 255)
    return round(float(np.median(means)), 3)


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    defaults: InferenceDefaults | None = None,
    version: str | None = None,
    dtype: torch.dtype = torch.float32,
    step: int | None = None,
) -> Path:
    """Bundle the three finished stages of ``run_dir`` with provenance, config, commit and metrics; with
    ``step``, a stage that has a snapshot at that step (a dev check of a run still going) is taken from it."""
    run_dir = Path(run_dir)
    kind = KinD(defaults, version=version or run_dir.name)
    configs: dict[str, dict[str, Any]] = {}
    steps: dict[str, int] = {}
    for stage in STAGES:
        state = load_checkpoint(run_dir / stage)
        if state is not None:
            configs[stage] = json.loads(state["config"])
            steps[stage] = int(state["step"])
    config = next(iter(configs.values()), {})
    # a fine-tuning run: the stages it did not train come from its init bundle, whose record is kept
    base = KinD.load(config["init"]) if config.get("init") else None
    for stage in STAGES:
        snapshot = load_finished(kind, run_dir, stage, base, step)
        if snapshot is not None:
            steps[stage] = snapshot
    # a resumed stage may have run under a newer config than the first stage: keep each stage's own
    training: dict[str, Any] = {"config": config, "stage_configs": configs, "steps": steps, "code_commit": git_commit()}
    if base is not None:
        training["init"] = {"bundle": base.version, "training": base.manifest["training"]}
    if defaults is None:
        cfg = config_from_dict(config)
        defaults = InferenceDefaults(exposure_target=exposure_target(cfg), max_clipped=cfg.pairs.max_clipped)
        kind.defaults = defaults
    provenance = (
        dict(SICE_PROVENANCE) if config.get("data_format", "sice") == "sice" else {"dataset": config.get("data")}
    )
    kind.save(
        out,
        dtype=dtype,
        provenance=provenance,
        training=training,
        metrics=metrics or {},
    )
    return Path(out)
