"""The authors' training losses (``docs/kind-reference.md`` §4), one pure function each.

All tensors are N×C×H×W in [0, 1]. ``gradient`` is the authors' operator: |2×2 difference| with TF SAME
padding (a zero row/column at the bottom/right) then min-max normalised over the whole batch tensor.
The zero border makes a spurious edge that usually sets the max, and the 2×2 kernel's zero top row means
row 0 (column 0 for ``"y"``) is never differentiated: the nets are free to leave a line there.
``official=False`` takes the forward difference of every row and column with a replicated last one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

_GRAY_BT601 = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale
_KERNEL_X = torch.tensor([[0.0, 0.0], [-1.0, 1.0]])


def gray(image: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY_BT601, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * w).sum(dim=1, keepdim=True)


def gradient(x: torch.Tensor, direction: str, official: bool = True) -> torch.Tensor:
    """Normalised absolute gradient of a 1-channel map along ``"x"`` or ``"y"``."""
    if official:
        kernel = _KERNEL_X if direction == "x" else _KERNEL_X.t()
        g = F.conv2d(F.pad(x, (0, 1, 0, 1)), kernel.to(x).view(1, 1, 2, 2)).abs()
    elif direction == "x":  # forward difference on every row; the replicated last column has none
        g = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs(), (0, 1, 0, 0))
    else:
        g = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
    return (g - g.min()) / (g.max() - g.min() + 1e-4)


def smoothness(illum: torch.Tensor, image: torch.Tensor, official: bool = True) -> torch.Tensor:
    """L_is: illumination gradients relative to the image's (structure-aware smoothness)."""
    g = gray(image)
    x, y = ((gradient(illum, d, official) / gradient(g, d, official).clamp_min(0.01)).abs().mean() for d in ("x", "y"))
    return x + y


def mutual_consistency(illum_low: torch.Tensor, illum_high: torch.Tensor, official: bool = True) -> torch.Tensor:
    """L_mc: strong shared edges are kept, weak ones pushed to zero."""
    m_x, m_y = (gradient(illum_low, d, official) + gradient(illum_high, d, official) for d in ("x", "y"))
    return (m_x * torch.exp(-10 * m_x) + m_y * torch.exp(-10 * m_y)).mean()


def decom_loss(
    r_low: torch.Tensor,
    l_low: torch.Tensor,
    r_high: torch.Tensor,
    l_high: torch.Tensor,
    s_low: torch.Tensor,
    s_high: torch.Tensor,
    official: bool = True,
    reflectance_weight: float = 0.01,
) -> torch.Tensor:
    recon = (r_low * l_low - s_low).abs().mean() + (r_high * l_high - s_high).abs().mean()
    reflectance = (r_low - r_high).abs().mean()
    return (
        recon
        + reflectance_weight * reflectance
        + 0.2 * mutual_consistency(l_low, l_high, official)
        + 0.15 * smoothness(l_high, s_high, official)
        + 0.15 * smoothness(l_low, s_low, official)
    )


def _grad_mse(a: torch.Tensor, b: torch.Tensor, official: bool) -> torch.Tensor:
    x, y = (((gradient(a, d, official) - gradient(b, d, official)) ** 2).mean() for d in ("x", "y"))
    return x + y


def adjust_loss(adjusted: torch.Tensor, target: torch.Tensor, official: bool = True) -> torch.Tensor:
    return ((adjusted - target) ** 2).mean() + _grad_mse(adjusted, target, official)


def colour_angle(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean 1 − cos of the angle between each pixel's RGB vectors: hue and saturation, blind to brightness."""
    return (1 - F.cosine_similarity(restored, target, dim=1, eps=1e-4)).mean()


def restore_loss(
    restored: torch.Tensor, target: torch.Tensor, official: bool = True, colour_weight: float = 0.0
) -> torch.Tensor:
    """MSE + (1 − SSIM) + gradient MSE on grey; SSIM: 11×11 Gaussian σ=1.5, VALID, C1=1e-4, C2=9e-4.

    ``colour_weight`` adds :func:`colour_angle` (ours; the authors' loss has no colour term).
    """
    structural = 1 - ssim(restored, target, data_range=1.0, win_size=11, win_sigma=1.5)
    loss = ((restored - target) ** 2).mean() + structural + _grad_mse(gray(restored), gray(target), official)
    if colour_weight:
        loss = loss + colour_weight * colour_angle(restored, target)
    return loss


def illumination_prior(illum: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """|L − max_c S|: the classical Retinex initial illumination (LIME), used only to warm up DecomNet."""
    return (illum - image.amax(dim=1, keepdim=True)).abs().mean()
