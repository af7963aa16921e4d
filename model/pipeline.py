"""The KinD inference pipeline: normalisation, output composition, automatic light level, tiling.

Follows the authors' code (``docs/kind-reference.md`` §3, §5):

- ``S = (x − min x) / max(max x − min x, 0.001)`` over the whole image, all channels;
- ``paper`` output: ``R̂ · L̂``;
- ``photo`` output (default): ``w·S + (1 − w)·(R̂ · m · L̂)`` with the grey-region mask
  ``m = min(sqrt(2·blur_σ3(gray R)), 1)``, clipped to [0, 1]. The authors take ``w = L``; we take
  ``w = L · span`` where ``span = max x − min x`` is the range the stretch expanded (our change). For an image
  that already spans [0, 1] this is their formula; for a dim one without highlights (span 0.1: the stretch
  amplified it, and its noise, tenfold) the fusion no longer hands the noisy input back where L is high.
  Also ours: the brightened branch's luminance is limited to ``GAIN_HEADROOM · α`` times the local input
  luminance (Gaussian σ 2). Where the input is black — a night sky, a dark backdrop — the networks invent a
  mid-grey reflectance and the adjustment lifts it to a brown veil; the limit keeps such regions as dark
  as α allows while leaving the stronger-than-α shadow lift KinD learns elsewhere (dev: −0.02 dB).
  Then, as a camera pipeline does, chroma noise reduction: the colour differences from luminance are blurred
  (Gaussian σ 3), the luminance is kept — the restoration net leaves colour speckle in dim phone shots.

Automatic light level (our addition; the authors fix α = 5 or take it from the ground truth): α is the
smallest value in [1, 20] whose output, computed on a ≤128-pixel preview of the image, reaches the
bundle's ``exposure_target`` mean intensity (mean of R, G, B; 0.45 unless the bundle says otherwise),
metered over the pixels that carry signal: those with some channel of S above ``BLACK_LEVEL`` (5/255).
Pixels at the floor (a night sky, the unlit walls of a room shot against its window) hold no detail to
recover; counted in the mean they demanded the highest α, which lifted them to a brown veil and left dark
halos around the lights. When fewer than ``MIN_METERED`` of the pixels carry signal, the whole image is
metered. An image that is already brighter than the target gets α = 1 (never darkened automatically); one
that no α brings to the target gets the α of the brightest output (the adjustment net saturates past its
training range). And as the training targets were chosen with at most 5 % clipped pixels, α is at most the
largest value at which ``R̂ · L̂`` — the scene as KinD brightens it — clips at most ``max_clipped`` of the
pixels (a channel ≥ 250/255): a lit facade at night is not blown out to lift the dark around it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .tiling import TileMerger, split_windows

MODES = ("photo", "paper")
ALPHA_MIN, ALPHA_MAX = 0.1, 20.0
AUTO_ALPHA_MIN = 1.0
PREVIEW_SIDE = 128
BLACK_LEVEL = 5 / 255  # SICE's "dark" pixel (all channels ≤ 5 of 255), applied to the stretched image
MIN_METERED = 0.1
CLIP_LEVEL = 250 / 255  # SICE's clipped pixel: some channel ≥ 250 of 255
GAIN_HEADROOM = 3.0
CHROMA_SIGMA = 3.0


class AlphaError(ValueError):
    """A light level outside the supported range or not a number."""


@dataclass(frozen=True)
class InferenceDefaults:
    """Inference settings stored in a bundle's manifest (``inference`` section)."""

    mode: str = "photo"
    exposure_target: float = 0.45
    max_clipped: float = 0.05
    tile_size: int = 768
    tile_overlap: int = 64


def parse_alpha(value: str | float | None) -> float | None:
    """``None``/``"auto"`` → ``None`` (automatic); otherwise a float in [ALPHA_MIN, ALPHA_MAX]."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise AlphaError(f"alpha must be 'auto' or a number, got {value!r}") from None
    if not (ALPHA_MIN <= alpha <= ALPHA_MAX):  # also rejects NaN
        raise AlphaError(f"alpha must be 'auto' or between {ALPHA_MIN} and {ALPHA_MAX}, got {value!r}")
    return alpha


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def stretch(x: torch.Tensor) -> torch.Tensor:
    """The authors' normalisation: one min-max stretch per image over all its channels."""
    return normalise(x)[0]


def normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`stretch` and :func:`span` from one min/max pass: ``(S, span)``."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    captured = (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(0.001)
    return (x - lo) / captured, captured


def span(x: torch.Tensor) -> torch.Tensor:
    """Per-image range ``max − min`` (N×1×1×1) that :func:`stretch` divides by: the gain it applies is 1/span."""
    return normalise(x)[1]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, edge-replicating, truncated at 4σ (as skimage.filters.gaussian)."""
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


_REC709 = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray, which the authors' photo script uses


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """N×1×H×W Rec. 709 luminance of an N×3×H×W image."""
    w = torch.tensor(_REC709, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(dim=1, keepdim=True)


def grey_mask(reflectance: torch.Tensor) -> torch.Tensor:
    """Damps the grey cast restoration leaves in very dark regions (authors' photo script)."""
    return torch.sqrt(2 * gaussian_blur(luminance(reflectance), 3.0).clamp_min(0)).clamp_max(1)


def limit_gain(brightened: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """Scale ``brightened`` down where its luminance exceeds ``GAIN_HEADROOM · α`` × the local input's."""
    alpha_t = torch.as_tensor(alpha, dtype=brightened.dtype, device=brightened.device).reshape(-1, 1, 1, 1)
    ceiling = GAIN_HEADROOM * alpha_t * gaussian_blur(luminance(image), 2.0)
    return brightened * (ceiling / luminance(brightened).clamp_min(1e-6)).clamp(max=1)


def reduce_chroma_noise(rgb: torch.Tensor, sigma: float = CHROMA_SIGMA) -> torch.Tensor:
    """Blur the colour differences from luminance, keep the luminance: colour speckle goes, detail stays."""
    luma = luminance(rgb)
    return luma + gaussian_blur(rgb - luma, sigma)


def compose(
    image: torch.Tensor,
    reflectance: torch.Tensor,
    illumination: torch.Tensor,
    restored: torch.Tensor,
    adjusted: torch.Tensor,
    mode: str,
    span: torch.Tensor | float = 1.0,
    alpha: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Final output from the normalised input S and the decomposition, restoration and adjustment.

    ``span``: the raw image's range (:func:`span`, N×1×1×1 or a float); photo mode trusts S in proportion.
    ``alpha``: the light level ``adjusted`` was made with (a float or N values); photo mode limits the gain
    with it (:func:`limit_gain`), ``None`` skips the limit.
    """
    if mode == "paper":
        return (restored * adjusted).clamp(0, 1)
    brightened = restored * grey_mask(reflectance) * adjusted
    if alpha is not None:
        brightened = limit_gain(brightened, image, alpha)
    brightened = reduce_chroma_noise(brightened)
    weight = illumination * span
    return (weight * image + (1 - weight) * brightened).clamp(0, 1)


@contextlib.contextmanager
def inference_context(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """``inference_mode`` plus autocast for ``precision`` in {fp32, fp16, bf16}."""
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    with torch.inference_mode():
        if precision == "fp32":
            yield
        elif precision in dtypes:
            with torch.autocast(device.type, dtype=dtypes[precision]):
                yield
        else:
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")


def preview(image: torch.Tensor, side: int = PREVIEW_SIDE) -> torch.Tensor:
    """Downscale so the longer side is at most ``side`` (area-averaged)."""
    h, w = image.shape[-2:]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(image, size=size, mode="area")


def metered_pixels(image: torch.Tensor) -> torch.Tensor:
    """1×1×H×W mask of the pixels of a normalised image that carry signal (the whole image if too few do)."""
    mask = image.amax(dim=1, keepdim=True) > BLACK_LEVEL
    if mask.float().mean() < MIN_METERED:
        return torch.ones_like(mask)
    return mask


def auto_alpha_from_parts(
    parts: dict[str, torch.Tensor],
    adjust,  # noqa: ANN001
    target: float,
    mode: str,
    span: torch.Tensor | float = 1.0,
    max_clipped: float = 1.0,
) -> float:
    """Smallest α in [1, ALPHA_MAX] whose metered output mean reaches ``target``, from one preview's nets outputs.

    Metered: the mean over :func:`metered_pixels`. When no α reaches it, the α of the brightest output. Never
    above the largest α at which ``R̂ · L̂`` clips at most ``max_clipped`` of the pixels (nor below 1).
    """
    grid = torch.logspace(math.log10(AUTO_ALPHA_MIN), math.log10(ALPHA_MAX), 48, device=parts["L"].device)
    n = grid.numel()
    mask = metered_pixels(parts["S"]).float()
    weights = mask / (mask.sum() * parts["S"].shape[1])
    adjusted = adjust(parts["L"].expand(n, -1, -1, -1), grid)
    means = (
        compose(
            parts["S"].expand(n, -1, -1, -1),
            parts["R"].expand(n, -1, -1, -1),
            parts["L"].expand(n, -1, -1, -1),
            parts["R_hat"].expand(n, -1, -1, -1),
            adjusted,
            mode,
            span,
            grid,
        )
        .float()
        .mul(weights)
        .sum(dim=(1, 2, 3))
        .cpu()
    )
    scene = (parts["R_hat"].expand(n, -1, -1, -1) * adjusted).float()
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
    return math.exp(math.log(grid[i - 1]) + t * (math.log(grid[i]) - math.log(grid[i - 1])))


def _clipping_at_most(grid: torch.Tensor, clipped: torch.Tensor, max_clipped: float) -> float:
    over = torch.nonzero(clipped > max_clipped)
    if over.numel() == 0:
        return float(grid[-1])
    return float(grid[max(int(over[0]) - 1, 0)])  # grid[0] = AUTO_ALPHA_MIN: never darkened automatically


def tiled(
    run,  # noqa: ANN001 - callable(S batch) -> output batch
    image: torch.Tensor,
    tile_size: int,
    overlap: int,
    tiles_per_batch: int = 1,
) -> torch.Tensor:
    """Apply ``run`` to overlapping tiles of a normalised 1×3×H×W image and blend them.

    ``run`` may return any number of channels (the output canvas takes the first tile's).
    """
    h, w = image.shape[-2:]
    windows = split_windows(h, w, tile_size, overlap)
    merger: TileMerger | None = None
    # equal-sized windows batch together; borders produce smaller ones
    by_shape: dict[tuple[int, int], list] = {}
    for win in windows:
        by_shape.setdefault((win.height, win.width), []).append(win)
    for group in by_shape.values():
        for i in range(0, len(group), tiles_per_batch):
            chunk = group[i : i + tiles_per_batch]
            batch = torch.cat([image[..., w.top : w.top + w.height, w.left : w.left + w.width] for w in chunk])
            out = run(batch)
            if merger is None:
                merger = TileMerger((1, out.shape[1], h, w), overlap)
            for win, tile in zip(chunk, out, strict=True):
                merger.add(win, tile[None])
    assert merger is not None  # split_windows always yields at least one window
    return merger.result()
