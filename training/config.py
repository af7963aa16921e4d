"""Training configuration: typed dataclasses, loaded from a YAML file plus ``key=value`` overrides.

The whole config is saved in every checkpoint and in the exported bundle's manifest, so a run can be
reproduced from either.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

STAGES = ("decom", "adjust", "restore")


@dataclass
class PairRules:
    """How low/normal-light pairs are drawn from a multi-exposure sequence."""

    target_mean: float = 0.45  # the normal-light frame is the one whose mean is closest to this …
    max_clipped: float = 0.05  # … among frames with at most this share of clipped pixels
    fallback_clipped: float = 0.10  # scenes where no frame passes: the least clipped frame if below this
    min_target_mean: float = 0.25  # scenes whose best frame is dimmer are skipped: a dim target teaches dim output
    max_low_ratio: float = 0.6  # a low frame is at most this fraction of the target's mean
    min_low_mean: float = 0.01  # near-black frames carry no signal to learn from
    exclude_misaligned: bool = True  # drop frames alignment.csv marks `misaligned`


@dataclass
class NoiseConfig:
    """Physically motivated degradation of the low-light input (see training/noise.py)."""

    enabled: bool = True
    probability: float = 0.9  # share of samples degraded; the rest stay clean
    # shorter exposure before the noise: linear signal × k, k log-uniform in this range, on this share of the
    # degraded samples. SICE's low frames are mostly mean 0.1–0.25; real low-light shots (phones, LOL) are
    # 0.01–0.08 and their whole-image stretch multiplies their noise by up to 10 — the net must see that
    darken_probability: float = 0.0
    darken_range: tuple[float, float] = (0.05, 1.0)
    # share of darkened samples whose frame keeps a highlight that did not darken (a lamp, a lit window): the
    # whole-image stretch cannot undo the darkening, so the net sees what a genuinely dark photo gives it
    keep_highlight_probability: float = 0.0
    # "clean": stretch with the clean frame's min/max; "degraded": with the degraded input's own, as inference
    # does (noise lowers the min and raises the max, so the stretched input is darker)
    stretch: Literal["clean", "degraded"] = "clean"
    shot_log10_range: tuple[float, float] = (-4.0, -2.5)  # shot-noise variance per unit linear signal
    read_slope: float = 2.18  # log read variance ≈ slope·log shot + intercept (Brooks et al. 2019)
    read_intercept: float = 1.2
    read_jitter: float = 0.26
    row_noise_fraction: float = 0.1  # row-noise σ relative to read-noise σ
    # phone ISPs (demosaicing, denoising, scaling) leave noise in blotches a few pixels wide, not i.i.d.
    correlated_probability: float = 0.5
    correlation_scale_range: tuple[float, float] = (1.5, 3.0)  # blotch size in pixels
    # demosaicing mixes the colour channels: this share of the noise variance is common to R, G and B (luma)
    channel_correlation: float = 0.0
    wb_red_range: tuple[float, float] = (1.6, 2.4)  # white-balance gains: colour noise in R and B
    wb_blue_range: tuple[float, float] = (1.4, 2.0)
    jpeg_probability: float = 0.5
    jpeg_quality_range: tuple[int, int] = (60, 95)


@dataclass
class StageConfig:
    steps: int
    batch_size: int
    patch_size: int
    lr: float = 1e-4
    lr_decay_at: float = 1.0  # fraction of the steps after which lr is halved (restore: 0.8)
    # "target": each low frame with its scene's normal-light frame; "exposures": any darker/brighter pair of a
    # scene's frames (SICE), so the adjustment net sees every light level at every ratio, not only "→ normal"
    pairs: str = "target"
    gradient: Literal["", "official", "corrected"] = ""  # this stage's gradient operator; "" = the run's
    # each drawn batch serves this many steps, turned by a different flip/rotation each time: for a GPU that the
    # data workers cannot keep busy (the noise synthesis runs on the CPU); 1 = a new batch every step
    repeat: int = 1


def _default_stages() -> dict[str, StageConfig]:
    return {
        "decom": StageConfig(steps=4000, batch_size=10, patch_size=48),
        "adjust": StageConfig(steps=2000, batch_size=10, patch_size=48),
        "restore": StageConfig(steps=4000, batch_size=8, patch_size=96, lr_decay_at=0.8),
    }


@dataclass
class TrainConfig:
    data: str = "../shared/datasets/sice-sequences"
    data_format: Literal["sice", "lol"] = "sice"  # "sice" (multi-exposure folders) or "lol" (our485|eval15/{low,high})
    out: str = "runs/kind"
    seed: int = 0
    # a bundle (``kind export`` output) every net starts from instead of random init: fine-tuning. Stages this
    # run has finished override it; stages it never trains come from it, in training and in ``kind export``
    init: str = ""
    # "official" (zero border, batch min-max; row 0 and column 0 never supervised) or "corrected" (every row
    # and column, replicated border); per stage: ``stages.<stage>.gradient``
    gradient: Literal["official", "corrected"] = "official"
    reflectance_weight: float = 0.01  # decom loss weight of |R_low − R_high| (authors: 0.01)
    # decom warm-up: |L − max_c S| pulls L toward the classical Retinex illumination (as LIME initialises
    # it), weight 1 → 0 over these steps; from random init the authors' loss otherwise settles on a flat L
    illumination_prior_steps: int = 0
    # restoration loss weight of the colour angle between output and target (ours; 0 = the authors' loss):
    # darkened, noisy training inputs otherwise teach the net to wash colours out
    colour_weight: float = 0.0
    pairs: PairRules = field(default_factory=PairRules)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    stages: dict[str, StageConfig] = field(default_factory=_default_stages)
    checkpoint_every: int = 200
    eval_every: int = 1000
    eval_pairs: int = 12  # dev pairs in the periodic evaluation (the full protocol is `kind eval`)
    eval_size: int = 256
    log_every: int = 10
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # processes drawing (and degrading) training batches ahead of the net; 0 draws them in the training process.
    # The batches are the same either way; on a GPU the CPU-side noise synthesis is what limits the speed
    workers: int = 0
    device: str = "cpu"
    # the networks' forward and backward under autocast: "bf16" (about 1.9× faster on CPUs with AVX-512-BF16;
    # emulated, and many times slower, elsewhere), "auto" (bf16 where the device runs it natively, else fp32)
    # or "fp32". The losses stay in float32 either way (model.precision; training/precision.py)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"


def _coerce(value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value)
    if origin is dict:
        _, vtype = typing.get_args(annotation)
        return {k: _coerce(v, vtype) for k, v in value.items()}
    if origin is tuple:
        return tuple(_coerce(v, t) for v, t in zip(value, typing.get_args(annotation), strict=True))
    if origin in (typing.Union, types.UnionType):
        return value
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise ValueError(f"must be one of {list(typing.get_args(annotation))}, got {value!r}")
        return value
    if annotation is bool and isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    if annotation in (int, float, str):
        return annotation(value)
    return value


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(names)}")
    values = {}
    for key, value in data.items():
        try:
            values[key] = _coerce(value, hints[key])
        except ValueError as exc:
            raise ValueError(f"{cls.__name__}.{key}: {exc}") from None
    return cls(**values)


def _merge(base: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = base
    for part in path:
        if not isinstance(node.get(part), dict):
            raise ValueError(f"override {key!r}: {part!r} is not a config section")
        node = node[part]
    if last not in node:
        raise ValueError(f"override {key!r}: unknown key {last!r}")
    node[last] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults ← YAML file ← ``section.key=value`` overrides (values parsed as YAML)."""
    data = dataclasses.asdict(TrainConfig())
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        for key, value in flatten(loaded):
            _merge(data, key, value)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value")
        _merge(data, key.strip(), yaml.safe_load(raw))
    return _from_dict(TrainConfig, data)


def flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.extend(flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`to_dict` (e.g. the config stored in a checkpoint)."""
    return _from_dict(TrainConfig, data)
