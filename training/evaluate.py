"""Paired evaluation: PSNR/SSIM (and their GT-mean variants) with automatic or oracle α, plus baselines.

Protocol (``kind eval``): every (low, target) pair of the split under the run's pair rules, whole frames;
the output is compared with the raw normal-light frame in [0, 1]. "GT-mean" metrics first scale the
output so its mean equals the ground truth's, which removes the choice of exposure from the score.
The oracle α is the authors' ``mean(L_gt / (L_low + 1e-4))``: it needs the ground truth, so it is
reported separately and never used by the service.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from kind_serve.model import ALPHA_MAX, ALPHA_MIN, AUTO, KinD, LightLevel, Mode, recipe
from kind_serve.model.normalise import stretch

from .data import ImageCache, Pair

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (low raw, high raw) → output


def psnr(output: torch.Tensor, target: torch.Tensor) -> float:
    mse = F.mse_loss(output.clamp(0, 1), target).item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def ssim_index(output: torch.Tensor, target: torch.Tensor) -> float:
    return ssim(output.clamp(0, 1), target, data_range=1.0, win_size=11, win_sigma=1.5).item()


def gt_mean(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output * target.mean() / output.mean().clamp_min(1e-6)).clamp(0, 1)


def oracle_alpha(kind: KinD, low: torch.Tensor, high: torch.Tensor) -> float:
    """The authors' exposure ratio from the ground truth's illumination."""
    _, l_low = kind.decompose(stretch(low).to(kind.device))
    _, l_high = kind.decompose(stretch(high).to(kind.device))
    return float((l_high / (l_low + 1e-4)).mean())


def kind_method(
    kind: KinD, alpha: str, mode: Mode
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, float]]:
    def run(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, float]:
        # the oracle is clamped to the range every front end accepts
        light = LightLevel(min(max(oracle_alpha(kind, low, high), ALPHA_MIN), ALPHA_MAX)) if alpha == "oracle" else AUTO
        return recipe.enhance(kind, low, light, mode, tile_size=max(low.shape[-2:]))  # whole frames

    return run


def identity(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, float]:
    return low, 1.0


def gamma_curve(low: torch.Tensor, high: torch.Tensor, target: float = 0.45) -> tuple[torch.Tensor, float]:
    """Global gamma that maps the image mean to ``target``."""
    mean = float(low.mean().clamp(1e-4, 0.9999))
    g = math.log(target) / math.log(mean)
    return low.clamp_min(0) ** g, g


def load_pair(cache: ImageCache, pair: Pair, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = []
    for path in (pair.low, pair.high):
        arr = cache[path][0]
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
        if size is not None and max(t.shape[-2:]) > size:
            t = F.interpolate(t, size=(size, size * t.shape[-1] // t.shape[-2]), mode="area")
        tensors.append(t)
    return tensors[0], tensors[1]


@torch.inference_mode()
def evaluate(
    methods: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, float]]],
    pairs: Iterable[Pair],
    cache: ImageCache,
    size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Mean PSNR, SSIM, GT-mean PSNR/SSIM and mean α (or gamma) per method over ``pairs``."""
    sums: dict[str, dict[str, float]] = {name: {} for name in methods}
    n = 0
    for pair in pairs:
        low, high = load_pair(cache, pair, size)
        n += 1
        for name, method in methods.items():
            out, param = method(low, high)
            scaled = gt_mean(out, high)
            row = {
                "psnr": psnr(out, high),
                "ssim": ssim_index(out, high),
                "psnr_gt_mean": psnr(scaled, high),
                "ssim_gt_mean": ssim_index(scaled, high),
                "param": param,
            }
            for key, value in row.items():
                sums[name][key] = sums[name].get(key, 0.0) + value
    return {name: {k: round(v / max(n, 1), 4) for k, v in row.items()} | {"pairs": n} for name, row in sums.items()}


@torch.inference_mode()
def decomposition_quality(
    kind: KinD, pairs: Iterable[Pair], cache: ImageCache, size: int | None = None
) -> dict[str, float]:
    """Operator-independent scores of a decomposition net on (low, high) pairs.

    ``reflectance_psnr``: R of the low frame against R of the high frame — KinD's premise is that
    reflectance does not depend on exposure. ``reconstruction_psnr``: R·L against the normalised input,
    both frames. ``illumination_tv``: mean absolute gradient of L (lower is smoother). Comparing two
    training recipes on these avoids their own losses, which depend on the recipe.
    """
    sums = {"reflectance_psnr": 0.0, "reconstruction_psnr": 0.0, "illumination_tv": 0.0}
    n = 0
    for pair in pairs:
        low, high = (stretch(t) for t in load_pair(cache, pair, size))
        (r_low, l_low), (r_high, l_high) = kind.decompose(low), kind.decompose(high)
        sums["reflectance_psnr"] += psnr(r_low, r_high)
        sums["reconstruction_psnr"] += (psnr(r_low * l_low, low) + psnr(r_high * l_high, high)) / 2
        for illum in (l_low, l_high):
            tv = (illum.diff(dim=-1).abs().mean() + illum.diff(dim=-2).abs().mean()).item()
            sums["illumination_tv"] += tv / 2
        n += 1
    return {k: round(v / max(n, 1), 4) for k, v in sums.items()} | {"pairs": n}
