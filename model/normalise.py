"""The authors' input normalisation (``docs/kind-reference.md`` §3): one min-max stretch per image.

``S = (x − min x) / max(max x − min x, 0.001)`` over the whole image, all channels. The divisor, the
image's ``span``, is the gain the stretch applied; photo mode (:mod:`model.compose`) uses it to trust S
less where the stretch amplified a dim image, and its noise, many times.
"""

from __future__ import annotations

import torch


def normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`stretch` and :func:`span` of an N×3×H×W batch from one min/max pass: ``(S, span)``."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    captured = (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(0.001)
    return (x - lo) / captured, captured


def stretch(x: torch.Tensor) -> torch.Tensor:
    """The normalised image S (N×3×H×W in [0, 1])."""
    return normalise(x)[0]


def span(x: torch.Tensor) -> torch.Tensor:
    """Per-image range ``max − min`` (N×1×1×1) that :func:`stretch` divides by: the gain it applies is 1/span."""
    return normalise(x)[1]
