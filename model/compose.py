"""The output composition: how the networks' outputs become the enhanced image (``paper`` or ``photo``).

Follows the authors' code (``docs/kind-reference.md`` §5):

- ``paper``: ``R̂ · L̂``, clipped to [0, 1];
- ``photo`` (default): ``w·S + (1 − w)·(R̂ · m · L̂)`` with the grey-region mask
  ``m = min(sqrt(2·blur_σ3(gray R)), 1)``, clipped to [0, 1]. The authors take ``w = L``; we take
  ``w = L · span`` (:func:`model.normalise.span`): for an image that already spans [0, 1] this is their
  formula; for a dim one the stretch amplified, the fusion no longer hands the noisy input back where L is high.

Photo mode adds two steps of ours. The brightened branch's luminance is limited to ``GAIN_HEADROOM · α``
times the input's: where the input is black (a night sky, a dark backdrop) the networks invent a mid-grey
reflectance that the adjustment would lift to a brown veil. The limit is a smooth gain map, compared on local
medians of 8×8-pixel cell means rather than pixel by pixel: in a genuinely dark, noisy frame the input's noise
would otherwise decide, blotch by blotch, what "is black", and print its pattern on the output as dark
patches ("camouflage"), while a black region as large as a few cells still stays black. Two guards keep that
map from cutting holes where a near-black object meets a lit one: the input's level is taken as at least half
an 8-bit code value (:data:`BLACK_FLOOR`; an 8-bit photo cannot tell anything darker from black, so a cell of
zeros would otherwise cap the output at its own black), and a cell's gain may rise toward its neighbours'
(a log-domain blur across cells, never lowering a gain), so it climbs over a few cells rather than at a
cell's edge, and no lit area darkens beside a black one. Then, as a camera
pipeline does, chroma noise reduction: the colour differences from luminance are blurred (Gaussian σ 3) and
the luminance kept, since the restoration net leaves colour speckle in dim phone shots.

Before all that, photo mode hands back the fine luminance detail the restoration smoothed away where R can be
trusted (:func:`lost_detail`): R's noise is the raw input's divided by its illumination, L · span, so where that
is high R's fine structure is the scene's, and the net's smoothing there only blurs it (the "watercolour" look).
As for the fusion, the raw illumination and not L: in a dim capture the stretch amplified the noise with the
rest.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F

Mode = Literal["photo", "paper"]  # the output composition: photo keeps bright regions, paper is R̂·L̂
MODES: tuple[str, ...] = get_args(Mode)
GAIN_HEADROOM = 3.0
GAIN_CELL = 8  # px: the gain limit's cell; its map is the median over 3×3 cells of the cells' mean luminance
GAIN_SMOOTHING = 1.0  # cells: σ of the log-domain blur that lets a cell's gain rise toward its neighbours'
BLACK_FLOOR = 0.5 / 255  # raw input units: the least local level the gain limit assumes (half an 8-bit code)
GREY_SIGMA = 3.0  # px: the blur of R's luminance behind the grey mask (authors' photo script)
CHROMA_SIGMA = 3.0
# below this share of its neighbourhood's luminance a pixel takes the blurred colour in proportion: the colour
# of a lamp stays off the black sky beside it, while texture (a pixel at least half as bright as its
# surroundings) keeps the whole blurred colour
HALO_SHARE = 0.5
DETAIL_SIGMA = 2.0  # px: the detail handed back is luma(R − R̂) less its blur at this σ (the fine scale only)
# the raw illumination (L · span) over which that detail is handed back, from none to all (a linear ramp)
DETAIL_RAMP = (0.1, 0.5)
_REC709 = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray, which the authors' photo script uses


def check_mode(mode: str) -> Mode:
    """``mode`` if it is one of :data:`MODES`, else ValueError naming them."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return cast(Mode, mode)


def blur_radius(sigma: float) -> int:
    """How far :func:`gaussian_blur` reaches: 4σ, rounded."""
    return int(4 * sigma + 0.5)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, edge-replicating, truncated at 4σ (as skimage.filters.gaussian); float32 out.

    Each pass is a weighted sum of shifted views, one per tap, rather than a depthwise convolution: PyTorch's
    CPU depthwise kernels run a few channels with a long kernel at ~1 GFLOP/s, twelve times slower than these
    in-place multiply-adds, and the grey mask and the chroma blur run at full resolution on every image. Always
    in float32, outside autocast: these blurs act on the output image, where the bits show. Under ONNX export
    each pass stays one depthwise convolution: ONNX runtimes run those well, and 50 slices a blur made the
    exporter's graph, and its run time, several times larger.
    """
    radius = blur_radius(sigma)
    n, c, h, w = x.shape
    with torch.autocast(x.device.type, enabled=False):
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = (kernel / kernel.sum()).float()
        if torch.onnx.is_in_onnx_export():
            k = kernel.to(x.device)
            x = F.pad(x.float(), (radius, radius, radius, radius), mode="replicate")
            x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
            return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        taps: list[float] = kernel.tolist()
        blurred = []
        # one plane at a time: each pass reads its input once a tap, which stays in cache for one plane (7 MB for
        # a 1344² region) but goes to memory for three (the chroma of a region blurred 2× slower)
        for plane in x.float().reshape(n * c, 1, h, w).split(1):
            plane = F.pad(plane, (radius, radius, radius, radius), mode="replicate")
            rows = plane[..., :w] * taps[0]
            for i, tap in enumerate(taps[1:], 1):
                rows.add_(plane[..., i : i + w], alpha=tap)
            out = rows[..., :h, :] * taps[0]
            for i, tap in enumerate(taps[1:], 1):
                out.add_(rows[..., i : i + h, :], alpha=tap)
            blurred.append(out)
        return (blurred[0] if len(blurred) == 1 else torch.cat(blurred)).view(n, c, h, w)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """N×1×H×W Rec. 709 luminance of an N×3×H×W image."""
    w = torch.tensor(_REC709, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(dim=1, keepdim=True)


def grey_mask(reflectance: torch.Tensor) -> torch.Tensor:
    """Damps the grey cast restoration leaves in very dark regions (authors' photo script)."""
    return torch.sqrt(2 * gaussian_blur(luminance(reflectance), GREY_SIGMA).clamp_min(0)).clamp_max(1)


def lost_detail(
    reflectance: torch.Tensor, illumination: torch.Tensor, restored: torch.Tensor, span: torch.Tensor | float
) -> torch.Tensor:
    """N×1×H×W luminance detail for photo mode to add to R̂: the high-pass (σ :data:`DETAIL_SIGMA`) of
    luma(R − R̂), weighted by a ramp of the raw illumination L · ``span`` (:data:`DETAIL_RAMP`; ``span`` as for
    :func:`compose`). Only luminance and only the fine scale, so R̂'s colour and tone (the restoration's work)
    stay; float32."""
    with torch.autocast(reflectance.device.type, enabled=False):
        lost = luminance(reflectance.float() - restored.float())
        low, high = DETAIL_RAMP
        span_t = torch.as_tensor(span, dtype=torch.float32, device=illumination.device).reshape(-1, 1, 1, 1)
        raw = illumination.float() * span_t
        weight = ((raw - low) / (high - low)).clamp(0, 1)
        return weight * (lost - gaussian_blur(lost, DETAIL_SIGMA))


def _local_level(luma: torch.Tensor) -> torch.Tensor:
    """Median over each cell's 3×3 neighbourhood of the :data:`GAIN_CELL` cell means of N×C×H×W ``luma``.

    One value per cell (sides rounded up by edge replication), per channel. The median, unlike a wider blur,
    neither lets a lamp spread into the black sky around it nor a noise blotch darken its cell.
    """
    h, w = luma.shape[-2:]
    means = F.avg_pool2d(F.pad(luma, (0, -w % GAIN_CELL, 0, -h % GAIN_CELL), mode="replicate"), GAIN_CELL)
    h, w = means.shape[-2:]
    padded = F.pad(means, (1, 1, 1, 1), mode="replicate")
    return median9([padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3)])


# Paeth's 19 compare-exchanges that leave the median of nine values at index 4 (as in Devillard, "Fast median
# search"): only minimum/maximum, so it also exports to ONNX, which has no median operator
_MEDIAN9: tuple[tuple[int, int], ...] = (
    (1, 2),
    (4, 5),
    (7, 8),
    (0, 1),
    (3, 4),
    (6, 7),
    (1, 2),
    (4, 5),
    (7, 8),
    (0, 3),
    (5, 8),
    (4, 7),
    (3, 6),
    (1, 4),
    (2, 5),
    (4, 7),
    (4, 2),
    (6, 4),
    (4, 2),
)


def median9(values: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise median of nine same-shaped tensors."""
    v = list(values)
    for a, b in _MEDIAN9:
        v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
    return v[4]


def limit_gain(
    brightened: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor | float, span: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """Scale ``brightened`` down where its local luminance exceeds ``GAIN_HEADROOM · α`` × the local input's.

    ``alpha``: a float or one value per image (N); ``span``: the raw images' ranges, as for :func:`compose`
    (the normalisation divided the raw image by it, so :data:`BLACK_FLOOR` grows by the same factor). The gain
    is one value per :data:`GAIN_CELL` cell (:func:`_local_level` of both sides), smoothed across cells and
    interpolated bilinearly, so it is smooth; it never takes a pixel below its input luminance, and hue is
    kept. In float32 outside autocast, as the blurs.
    """
    h, w = image.shape[-2:]
    with torch.autocast(image.device.type, enabled=False):
        alpha_t = torch.as_tensor(alpha, dtype=torch.float32, device=image.device).reshape(-1, 1, 1, 1)
        span_t = torch.as_tensor(span, dtype=torch.float32, device=image.device).reshape(-1, 1, 1, 1)
        luma_in, luma_out = luminance(image.float()), luminance(brightened.float())
        levels = _local_level(torch.cat([luma_in, luma_out], dim=1))  # both sides in one pass
        level_in = torch.maximum(levels[:, :1], BLACK_FLOOR / span_t.clamp_min(1e-3))
        gain = (GAIN_HEADROOM * alpha_t * level_in / levels[:, 1:].clamp_min(1e-6)).clamp(max=1)
        # a cell's gain may rise toward its neighbours' (blurred in the log domain), never fall: a step down to a
        # black cell becomes a ramp over a few cells instead of a cell-shaped edge, and the lit side keeps its gain
        gain = torch.maximum(gain, torch.exp(gaussian_blur(torch.log(gain.clamp_min(1e-4)), GAIN_SMOOTHING)))
        gain = F.interpolate(gain, scale_factor=GAIN_CELL, mode="bilinear", align_corners=False)[..., :h, :w]
        # never below the input itself: a lamp smaller than the median's reach keeps its own brightness
        floor = (luma_in / luma_out.clamp_min(1e-6)).clamp(max=1)
        return brightened * torch.maximum(gain, floor)


def reduce_chroma_noise(rgb: torch.Tensor, sigma: float = CHROMA_SIGMA) -> torch.Tensor:
    """Blur the colour differences from luminance, keep the luminance: colour speckle goes, detail stays.

    A pixel darker than :data:`HALO_SHARE` of its neighbourhood's luminance (blurred alike) takes the blurred
    colour in proportion to its share, so a lamp's colour does not spread into the black sky around it as a halo.
    """
    luma = luminance(rgb)
    # the blur and the luminance are linear: blurring RGB once gives the blurred luminance and colour differences
    # (to float rounding) for three planes' blurs instead of four
    blurred = gaussian_blur(rgb, sigma)
    blurred_luma = luminance(blurred)
    share = (luma / (HALO_SHARE * blurred_luma).clamp_min(1e-6)).clamp(max=1)
    return luma + (blurred - blurred_luma) * share


def compose(
    image: torch.Tensor,
    reflectance: torch.Tensor | None,
    illumination: torch.Tensor,
    restored: torch.Tensor,
    adjusted: torch.Tensor,
    mode: Mode,
    span: torch.Tensor | float = 1.0,
    alpha: torch.Tensor | float | None = None,
    mask: torch.Tensor | None = None,
    detail: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final output from the normalised input S and the decomposition, restoration and adjustment.

    ``span``: the raw image's range (N×1×1×1 or a float); photo mode trusts S in proportion.
    ``alpha``: the light level ``adjusted`` was made with (a float or N values); photo mode limits the gain
    with it (:func:`limit_gain`), ``None`` skips the limit. ``mask`` and ``detail``: :func:`grey_mask` and
    :func:`lost_detail` when the caller computed them already (they do not depend on α); with both given,
    ``reflectance`` is not read.
    """
    if mode == "paper":
        return (restored * adjusted).clamp(0, 1)
    if mask is None or detail is None:
        if reflectance is None:
            raise ValueError("photo mode needs the reflectance, or its grey mask and lost detail")
        mask = grey_mask(reflectance) if mask is None else mask
        detail = lost_detail(reflectance, illumination, restored, span) if detail is None else detail
    brightened = (restored + detail) * mask * adjusted
    if alpha is not None:
        brightened = limit_gain(brightened, image, alpha, span)
    brightened = reduce_chroma_noise(brightened)
    weight = illumination * span
    return (weight * image + (1 - weight) * brightened).clamp(0, 1)
