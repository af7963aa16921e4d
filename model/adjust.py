"""KinD illumination adjustment network: (L, α) → adjusted illumination L̂.

Zhang, Zhang, Guo, "Kindling the Darkness: A Practical Low-light Image Enhancer", ACM MM 2019
(arXiv:1905.04161), as built by the authors' TensorFlow code (scope ``Illumination_adjust_net``,
19,393 parameters). α is the desired brightening ratio, fed as a constant map beside L.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import LRELU_SLOPE, ConvLReLU, cat_channels, conv_to_one_channel, glorot_init


class IlluminationAdjustNet(nn.Module):
    """Four 3×3 convs on cat([L, α-map]); the last is followed by LeakyReLU *and* sigmoid, as in the code.

    Inputs: illumination N×1×H×W in [0, 1] and α as a tensor of N values (or broadcastable to N×1×1×1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvLReLU(2, 32), ConvLReLU(32, 32), ConvLReLU(32, 32))
        self.to_illumination = nn.Conv2d(32, 1, 3, padding=1)
        self.act = nn.LeakyReLU(LRELU_SLOPE)
        glorot_init(self)

    def forward(self, illumination: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        alpha_map = alpha.to(illumination).reshape(-1, 1, 1, 1).expand_as(illumination)
        x = self.body(cat_channels(illumination, alpha_map))
        return torch.sigmoid(self.act(conv_to_one_channel(self.to_illumination, x)))
