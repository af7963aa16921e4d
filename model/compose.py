"""The output composition: how the networks' outputs become the enhanced image (``paper`` or ``photo``).

Follows the authors' code (``docs/kind-reference.md`` §5):

- ``paper``: ``R̂ · L̂``, clipped to [0, 1];
- ``photo`` (default): ``w·S + (1 − w)·(R̂ · m · L̂)`` with the grey-region mask
  ``m = min(sqrt(2·blur_σ3(gray R)), 1)``, clipped to [0, 1]. The authors take ``w = L``; we take
  ``w = L · span`` (:func:`model.normalise.span`): for an image that already spans [0, 1] this is their
  formula; for a dim one the stretch amplified, the fusion no longer hands the noisy input back where L is high.

Photo mode adds two steps of ours. The brightened branch's luminance is limited to ``GAIN_HEADROOM · α``
times the local input luminance (Gaussian σ 2): where the input is black (a night sky, a dark backdrop) the
networks invent a mid-grey reflectance that the adjustment would lift to a brown veil. Then, as a camera
pipeline does, chroma noise reduction: the colour differences from luminance are blurred (Gaussian σ 3) and
the luminance kept, since the restoration net leaves colour speckle in dim phone shots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("photo", "paper")
GAIN_HEADROOM = 3.0
CHROMA_SIGMA = 3.0
_REC709 = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray, which the authors' photo script uses


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else ValueError naming them."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, edge-replicating, truncated at 4σ (as skimage.filters.gaussian); float32 out.

    Always in float32, outside autocast: oneDNN has no fast CPU kernel for bf16 depthwise convolutions (a
    600×400 image took minutes), and these blurs act on the output image, where the bits show.
    """
    radius = int(4 * sigma + 0.5)
    with torch.autocast(x.device.type, enabled=False):
        t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        c = x.shape[1]
        x = F.pad(x.float(), (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """N×1×H×W Rec. 709 luminance of an N×3×H×W image."""
    w = torch.tensor(_REC709, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(dim=1, keepdim=True)


def grey_mask(reflectance: torch.Tensor) -> torch.Tensor:
    """Damps the grey cast restoration leaves in very dark regions (authors' photo script)."""
    return torch.sqrt(2 * gaussian_blur(luminance(reflectance), 3.0).clamp_min(0)).clamp_max(1)


def limit_gain(brightened: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """Scale ``brightened`` down where its luminance exceeds ``GAIN_HEADROOM · α`` × the local input's.

    ``alpha``: a float or one value per image (N).
    """
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

    ``span``: the raw image's range (N×1×1×1 or a float); photo mode trusts S in proportion.
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
