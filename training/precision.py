"""Mixed precision for training: the networks under bf16 autocast, everything around them in float32.

Only the networks' convolutions gain from bf16; the losses (SSIM, gradients, colour angles on dark crops)
lose accuracy in it: under whole-loss autocast a restoration batch's loss moved by up to 0.16 against
float32, with the networks alone under autocast by 0.0016. So :class:`Autocast` wraps each network and hands
its outputs back in float32. Weights, gradients and the optimizer's state stay float32. fp16 is not offered:
it needs loss scaling, and bf16 runs at the same rate where either is native.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kind_serve.model.precision import cpu_native, cuda_native


def training_precision(setting: str, device: torch.device) -> str:
    """``setting`` ("fp32", "bf16" or "auto") resolved for ``device``: auto is bf16 where it is native."""
    if setting != "auto":
        return setting
    native = cuda_native("bf16", device) if device.type == "cuda" else cpu_native("bf16")
    return "bf16" if native else "fp32"


def _as_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float()
    return type(out)(*(o.float() for o in out))  # the decomposition's NamedTuple


class Autocast(nn.Module):
    """``module`` run under bf16 autocast, its outputs (a tensor or a tuple of them) back in float32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any) -> Any:
        with torch.autocast(next(self.module.parameters()).device.type, dtype=torch.bfloat16):
            out = self.module(*args)
        return _as_float(out)
