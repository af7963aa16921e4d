"""KinD reflectance restoration network: (R, L) → restored reflectance R̂.

Zhang, Zhang, Guo, "Kindling the Darkness: A Practical Low-light Image Enhancer", ACM MM 2019
(arXiv:1905.04161), as built by the authors' TensorFlow code (scope ``Restoration_net``,
7,760,739 parameters). L is an input so the net can denoise dark regions harder than bright ones.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvLReLU, UpConcat, cat_channels, glorot_init, max_pool

WIDTHS = (32, 64, 128, 256, 512)


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ConvLReLU(in_channels, out_channels), ConvLReLU(out_channels, out_channels))


class RestorationNet(nn.Module):
    """Five-level U-Net (four poolings), every conv 3×3 + LeakyReLU, sigmoid output.

    Inputs: reflectance N×3×H×W and illumination N×1×H×W in [0, 1]; any H×W.
    """

    def __init__(self) -> None:
        super().__init__()
        w = WIDTHS
        self.encoder = nn.ModuleList([_double_conv(4, w[0])] + [_double_conv(w[i - 1], w[i]) for i in range(1, 5)])
        self.ups = nn.ModuleList([UpConcat(w[i], w[i - 1]) for i in range(4, 0, -1)])
        self.decoder = nn.ModuleList([_double_conv(2 * w[i - 1], w[i - 1]) for i in range(4, 0, -1)])
        self.to_reflectance = nn.Conv2d(w[0], 3, 3, padding=1)
        glorot_init(self)

    def forward(self, reflectance: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        x = cat_channels(reflectance, illumination)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else max_pool(x))
            skips.append(x)
        skips.pop()
        for up, block in zip(self.ups, self.decoder, strict=True):
            x = block(up(x, skips.pop()))
        return torch.sigmoid(self.to_reflectance(x))
