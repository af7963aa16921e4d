"""The dark-regime benchmark: dev pairs taken to genuinely dark exposures that the stretch cannot undo.

A real night photo often has a lamp or a lit window at 0.9 while the rest of the frame sits at 0.01–0.04, so
the authors' whole-image min–max stretch leaves it dark and the networks must brighten it ×10–×40. Dev pairs
never look like that (SICE lows are at most 0.6× their target's mean and span most of [0, 1]). Here each low
frame is darkened in linear light to an input mean of ``level``, a small highlight is kept at its original
brightness, and the training noise model adds sensor noise at a fixed, calibrated strength
(``scripts/dark_calibration.py`` compares it with real low-light photos). Everything is seeded per pair.

Per level: PSNR and SSIM against the normal-light frame, GT-mean PSNR (the output scaled to the target's
mean: the restoration without the exposure choice), ``exposure`` (output mean over the target's), ``chroma`` (mean chroma of the output over the
target's: below 1 is washed out), ``hue`` (mean angle between output and target RGB in degrees: a colour cast,
the "sepia" look, which the chroma ratio cannot see), ``texture`` (high-frequency energy of the output's luma
over the target's, square-rooted: below 1 is smeared, above 1 is noisy), and ``border`` (mean error in the
3-px frame of the picture over the interior's: a line along an edge shows as a ratio above 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import NoiseConfig
from .data import ImageCache, Pair
from .evaluate import gt_mean, load_pair, psnr, ssim_index
from .noise import degrade, linear_to_srgb, srgb_to_linear

LEVELS = (0.04, 0.02, 0.01)  # input means
HIGHLIGHT = 0.95  # the kept highlight's level: a 4×4 lamp, so the stretch cannot brighten the frame
# the training noise model at one strength: on the darkest level, brightened to mean 0.4, it measures the σ of
# the darker real photos (scripts/dark_calibration.py)
NOISE = NoiseConfig(
    shot_log10_range=(-3.25, -3.25),
    read_jitter=0.0,
    correlated_probability=0.5,
    channel_correlation=0.5,
    jpeg_probability=1.0,
    jpeg_quality_range=(90, 90),
)
BORDER = 3  # px
SEED = 20261201

Method = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, float]]


def darken_to(image: np.ndarray, mean: float) -> np.ndarray:
    """``image`` (H×W×3 sRGB in [0, 1]) at the shorter exposure whose mean is ``mean`` (unchanged if darker)."""
    if float(image.mean()) <= mean:
        return image
    linear = srgb_to_linear(np.asarray(image, dtype=np.float32))  # darken()'s first step, done once
    lo, hi = math.log(1e-5), 0.0
    for _ in range(40):  # bisection on log exposure: the mean is monotone in it
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(linear_to_srgb(linear * math.exp(mid)).mean()) < mean else (lo, mid)
    return np.asarray(linear_to_srgb(linear * math.exp(lo)), dtype=np.float32)


def dark_input(low: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """The benchmark input for one raw 1×3×H×W frame: darkened to ``level``, a highlight kept, noise added."""
    image = low[0].permute(1, 2, 0).numpy().astype(np.float32)
    image = darken_to(image, level).copy()
    h, w = image.shape[:2]
    image[h // 2 : h // 2 + 4, w - 16 : w - 12] = HIGHLIGHT
    noisy = degrade(image, rng, NOISE)
    return torch.from_numpy(noisy).permute(2, 0, 1)[None].contiguous()


def luma_chroma(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Luma and chroma magnitude in JPEG's YCbCr (BT.601): the colour space the chroma literature reports in.

    ``losses.gray`` carries the same luma weights as TensorFlow rounds them (0.2989), for fidelity to the authors'
    loss (a luma difference below 1e-4); ``model.compose.luminance`` is Rec. 709, as the authors' photo script.
    """
    r, g, b = image.clamp(0, 1).unbind(dim=1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return y[:, None], torch.sqrt((0.564 * (b - y)) ** 2 + (0.713 * (r - y)) ** 2)


def _hue_error(output: torch.Tensor, target: torch.Tensor) -> float:
    """Mean angle in degrees between output and target RGB, over the pixels the target shows (max ≥ 0.05)."""
    cos = F.cosine_similarity(output.clamp(0, 1), target, dim=1, eps=1e-6).clamp(-1, 1)
    shown = target.amax(dim=1) >= 0.05
    return float(torch.rad2deg(torch.acos(cos[shown])).mean()) if bool(shown.any()) else 0.0


def _high_frequency_energy(y: torch.Tensor) -> float:
    smooth = F.avg_pool2d(F.pad(y, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    return float(((y - smooth) ** 2).mean())


def dark_metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR, SSIM, exposure, chroma, hue, texture and border figures of one output against its normal-light frame."""
    (y_out, c_out), (y_gt, c_gt) = luma_chroma(output), luma_chroma(target)
    error = (output.clamp(0, 1) - target).abs().mean(dim=1)[0]
    frame = torch.ones_like(error, dtype=torch.bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    interior = error[4 * BORDER : -4 * BORDER, 4 * BORDER : -4 * BORDER]
    return {
        "psnr": psnr(output, target),
        "ssim": ssim_index(output, target),
        "psnr_gt_mean": psnr(gt_mean(output, target), target),
        "exposure": float(output.clamp(0, 1).mean() / target.mean().clamp_min(1e-6)),
        "chroma": float(c_out.mean() / c_gt.mean().clamp_min(1e-6)),
        "hue": _hue_error(output, target),
        "texture": math.sqrt(_high_frequency_energy(y_out) / max(_high_frequency_energy(y_gt), 1e-12)),
        "border": float(error[frame].mean() / interior.mean().clamp_min(1e-6)),
    }


@torch.inference_mode()
def evaluate_dark(
    methods: dict[str, Method],
    pairs: Iterable[Pair],
    cache: ImageCache,
    size: int | None = None,
    levels: Sequence[float] = LEVELS,
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean metrics and α per method and level: ``{method: {"mean 0.01": {...}}}``; deterministic."""
    sums: dict[str, dict[str, dict[str, float]]] = {m: {f"mean {v}": {} for v in levels} for m in methods}
    n = 0
    for i, pair in enumerate(pairs):
        low, high = load_pair(cache, pair, size)
        for j, level in enumerate(levels):
            dark = dark_input(low, level, np.random.default_rng([SEED, j, i]))
            for name, method in methods.items():
                out, alpha = method(dark, high)
                row = dark_metrics(out, high) | {"alpha": alpha, "input_mean": float(dark.mean())}
                acc = sums[name][f"mean {level}"]
                for key, value in row.items():
                    acc[key] = acc.get(key, 0.0) + value
        n += 1
    return {
        name: {lv: {k: round(v / max(n, 1), 4) for k, v in row.items()} | {"pairs": n} for lv, row in per.items()}
        for name, per in sums.items()
    }
