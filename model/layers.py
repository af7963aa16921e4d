"""Building blocks shared by the three KinD networks.

They reproduce the TensorFlow ops of the authors' code (see ``docs/kind-reference.md`` §1):
LeakyReLU with slope 0.2, SAME-padded 3×3 convolutions, ceil-mode 2×2 max-pooling and a bias-free
2×2 transposed convolution whose output is cropped to the skip tensor from the top-left and
concatenated *before* it. With these rules every H×W works, 1×1 included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2  # TF code's lrelu; PyTorch's default 0.01 is the commonest port bug


class ConvLReLU(nn.Sequential):
    """3×3 SAME convolution with bias, then LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.LeakyReLU(LRELU_SLOPE, inplace=True),
        )


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """2×2/2 max-pool with TF SAME padding: an odd last row/column is pooled alone."""
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


class UpConcat(nn.Module):
    """Transposed conv 2×2/2 (no bias, no activation), crop to ``skip``, then ``cat([up, skip])``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)[..., : skip.shape[-2], : skip.shape[-1]]
        return torch.cat([up, skip], dim=1)


def cat_channels(*tensors: torch.Tensor) -> torch.Tensor:
    """``torch.cat`` along channels, laid out channels-last, as the package runs the networks.

    ``torch.cat`` lays its output out NCHW as soon as one input has a single channel (L, the α map); unless the
    weights are channels-last (:meth:`model.kind.KinD.prepare`), every convolution after it then runs NCHW, which
    oneDNN runs 1.4× (restoration) to 1.9× (adjustment) slower. The layout does not change the values.
    """
    return torch.cat(tensors, dim=1).contiguous(memory_format=torch.channels_last)


def glorot_init(module: nn.Module) -> None:
    """The authors' initialisation: Glorot-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
