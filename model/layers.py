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


def conv_to_one_channel(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` (3×3, SAME, one output channel) of ``x``: on the CPU in inference, a 1×1 convolution to the
    nine taps' planes plus their shifted sums (in float32), elsewhere ``conv`` itself.

    oneDNN pads a one-channel output to a vector's width of channels and runs a 3×3 convolution to it at a tenth
    of its usual rate (32→1 on 0.7 MP: 16 ms in bf16, 34 ms in float32, against 30 ms for 32→32 in bf16); the
    1×1 convolution to nine channels runs at the full rate, and the sums are cheap. The values are the same up
    to float rounding: float32 sums in another order, and bf16 rounds each tap's plane instead of their total.
    Training keeps ``conv`` (its gradient), and so does ONNX export (runtimes run this conv well).
    """
    if x.device.type != "cpu" or torch.is_grad_enabled() or torch.onnx.is_in_onnx_export():
        return conv(x)
    out_channels, in_channels, kh, kw = conv.weight.shape
    assert out_channels == 1 and (kh, kw) == (3, 3) and conv.padding == (1, 1), "a 3×3 SAME conv to one channel"
    taps = conv.weight.permute(2, 3, 0, 1).reshape(9, in_channels, 1, 1)
    planes = F.conv2d(x, taps)
    h, w = x.shape[-2:]
    # float32 outside autocast: the sum of nine rounded planes is as close as the conv's one rounded sum
    with torch.autocast(x.device.type, enabled=False):
        out = planes[:, 4:5].to(torch.float32, copy=True)
        if conv.bias is not None:
            out += conv.bias.float()
        for tap in (0, 1, 2, 3, 5, 6, 7, 8):
            dy, dx = tap // 3 - 1, tap % 3 - 1
            top, bottom, left, right = max(-dy, 0), h - max(dy, 0), max(-dx, 0), w - max(dx, 0)
            out[..., top:bottom, left:right] += planes[:, tap : tap + 1, top + dy : bottom + dy, left + dx : right + dx]
    return out


def glorot_init(module: nn.Module) -> None:
    """The authors' initialisation: Glorot-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
