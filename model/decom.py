"""KinD decomposition network: image S → reflectance R (3 ch) and illumination L (1 ch).

Zhang, Zhang, Guo, "Kindling the Darkness: A Practical Low-light Image Enhancer", ACM MM 2019
(arXiv:1905.04161), as built by the authors' TensorFlow code (scope ``DecomNet``, 235,876 parameters).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .layers import ConvLReLU, UpConcat, glorot_init, max_pool


class Decomposition(NamedTuple):
    reflectance: torch.Tensor  # N×3×H×W in [0, 1]
    illumination: torch.Tensor  # N×1×H×W in [0, 1]


class DecomNet(nn.Module):
    """Two-level U-Net for R plus a shallow branch off the first level for L.

    Input: normalised image, float N×3×H×W in [0, 1]; any H×W.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvLReLU(3, 32)
        self.conv2 = ConvLReLU(32, 64)
        self.conv3 = ConvLReLU(64, 128)
        self.up8 = UpConcat(128, 64)
        self.conv8 = ConvLReLU(128, 64)
        self.up9 = UpConcat(64, 32)
        self.conv9 = ConvLReLU(64, 32)
        self.to_reflectance = nn.Conv2d(32, 3, 1)
        self.illum_conv = ConvLReLU(32, 32)
        self.to_illumination = nn.Conv2d(64, 1, 1)
        glorot_init(self)

    def forward(self, image: torch.Tensor) -> Decomposition:
        c1 = self.conv1(image)
        c2 = self.conv2(max_pool(c1))
        c3 = self.conv3(max_pool(c2))
        c8 = self.conv8(self.up8(c3, c2))
        c9 = self.conv9(self.up9(c8, c1))
        reflectance = torch.sigmoid(self.to_reflectance(c9))
        illum = self.illum_conv(c1)
        illumination = torch.sigmoid(self.to_illumination(torch.cat([illum, c9], dim=1)))
        return Decomposition(reflectance, illumination)
