"""Automatic light level: the α that "auto" means, chosen per image on a small preview (our addition).

The authors fix α = 5 or take it from the ground truth. Here α is the smallest value in
[``AUTO_ALPHA_MIN``, ``ALPHA_MAX``] whose output, computed on a ≤ ``PREVIEW_SIDE``-pixel preview of the
image, reaches the bundle's ``exposure_target`` mean intensity (mean of R, G, B), metered over the pixels
that carry signal: those with some channel of S above the floor (:func:`black_level`). Pixels at the floor
(a night sky, the black water of a harbour at night) hold no detail to recover; counted in the mean they would
demand the highest α, lifting them to a brown veil. The floor is ``BLACK_LEVEL``, or ``FLOOR_STOPS`` below the
scene's bright end when the whole scene sits that low: in a genuinely dark photo (mean 0.01–0.04 behind one
small lamp, which the stretch cannot brighten) most of the picture is below ``BLACK_LEVEL`` yet carries the
scene, and metering only its brightest tenth stopped α at half of what the picture needs. When fewer than
``MIN_METERED`` of the pixels carry signal, the whole image is metered.

An image already brighter than the target gets α = 1 (never darkened automatically); one that no α brings
to the target gets the α of the brightest output (the adjustment net saturates past its training range).
As the training targets were chosen with at most 5 % clipped pixels, α is also at most the largest value at
which ``R̂ · L̂`` (the scene as KinD brightens it) clips at most ``max_clipped`` of the pixels: a lit facade
at night is not blown out to lift the dark around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .compose import Mode, compose
from .light import ALPHA_MAX

AUTO_ALPHA_MIN = 1.0
PREVIEW_SIDE = 128
BLACK_LEVEL = 5 / 255  # SICE's "dark" pixel (all channels ≤ 5 of 255), applied to the stretched image
SCENE_QUANTILE = 0.9  # the scene's bright end: a lamp or a lit window of a few per cent does not set it
FLOOR_STOPS = 3  # a pixel this many stops below the scene's bright end is at the floor
MIN_METERED = 0.1
CLIP_LEVEL = 250 / 255  # SICE's clipped pixel: some channel ≥ 250 of 255
GRID_POINTS = 48

Adjust = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (L N×1×H×W, α N) → adjusted L


def preview(image: torch.Tensor, side: int = PREVIEW_SIDE) -> torch.Tensor:
    """Downscale so the longer side is at most ``side`` (area-averaged)."""
    h, w = image.shape[-2:]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(image, size=size, mode="area")


def black_level(image: torch.Tensor) -> float:
    """The floor of a normalised 1×3×H×W image: ``BLACK_LEVEL``, or ``FLOOR_STOPS`` below its bright end if lower."""
    bright = torch.quantile(image.amax(dim=1).flatten().float(), SCENE_QUANTILE)
    return min(BLACK_LEVEL, float(bright) / 2**FLOOR_STOPS)


def metered_pixels(image: torch.Tensor) -> torch.Tensor:
    """1×1×H×W mask of the pixels of a normalised image that carry signal (the whole image if too few do)."""
    mask = image.amax(dim=1, keepdim=True) > black_level(image)
    if mask.float().mean() < MIN_METERED:
        return torch.ones_like(mask)
    return mask


def auto_alpha_from_parts(
    parts: dict[str, torch.Tensor],
    adjust: Adjust,
    target: float,
    mode: Mode,
    span: torch.Tensor | float = 1.0,
    max_clipped: float = 1.0,
) -> float:
    """Smallest α in [1, ALPHA_MAX] whose metered output mean reaches ``target``, from one preview's net outputs.

    ``parts``: ``S`` (the normalised preview), ``R``, ``L`` and ``R_hat``, each 1×C×h×w. Metered: the mean
    over :func:`metered_pixels`. When no α reaches it, the α of the brightest output. Never above the largest
    α at which ``R̂ · L̂`` clips at most ``max_clipped`` of the pixels (nor below 1).
    """
    device = parts["L"].device
    grid = torch.logspace(math.log10(AUTO_ALPHA_MIN), math.log10(ALPHA_MAX), GRID_POINTS, device=device)
    n = grid.numel()
    mask = metered_pixels(parts["S"]).float()
    weights = mask / (mask.sum() * parts["S"].shape[1])
    s, r, l, r_hat = (parts[k].expand(n, -1, -1, -1) for k in ("S", "R", "L", "R_hat"))
    adjusted = adjust(l, grid)
    outputs = compose(s, r, l, r_hat, adjusted, mode, span, grid).float()
    means = outputs.mul(weights).sum(dim=(1, 2, 3)).cpu()
    scene = (r_hat * adjusted).float()
    clipped = (scene.amax(dim=1) >= CLIP_LEVEL).float().mean(dim=(1, 2)).cpu()
    grid = grid.cpu()
    return round(min(_reaching(grid, means, target), _clipping_at_most(grid, clipped, max_clipped)), 3)


def _reaching(grid: torch.Tensor, means: torch.Tensor, target: float) -> float:
    above = torch.nonzero(means >= target)
    if above.numel() == 0:
        # the target is out of reach: take the brightest output rather than ALPHA_MAX, since past its
        # training range the adjustment net's output stops growing with α (and even falls)
        return float(grid[int(means.argmax())])
    i = int(above[0])
    if i == 0:
        return AUTO_ALPHA_MIN
    # interpolate in log α between the two grid points that bracket the target
    m0, m1 = float(means[i - 1]), float(means[i])
    t = (target - m0) / max(m1 - m0, 1e-6)
    lo, hi = float(grid[i - 1]), float(grid[i])
    return math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))


def _clipping_at_most(grid: torch.Tensor, clipped: torch.Tensor, max_clipped: float) -> float:
    over = torch.nonzero(clipped > max_clipped)
    if over.numel() == 0:
        return float(grid[-1])
    return float(grid[max(int(over[0]) - 1, 0)])  # grid[0] = AUTO_ALPHA_MIN: never darkened automatically
