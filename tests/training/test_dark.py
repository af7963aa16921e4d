"""The dark-regime benchmark: its inputs are dark and stay dark, its figures see smearing, fading and lines."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kind_serve.model.normalise import normalise
from kind_serve.training.dark import HIGHLIGHT, dark_input, dark_metrics


def _scene(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 16, 24, generator=g), size=(128, 192), mode="bilinear")
    return (0.15 + 0.6 * base + 0.1 * torch.rand(1, 3, 128, 192, generator=g)).clamp(0, 1)


def test_inputs_are_dark_deterministic_and_the_stretch_cannot_undo_them() -> None:
    low = _scene()
    a = dark_input(low, 0.02, np.random.default_rng([1, 2]))
    b = dark_input(low, 0.02, np.random.default_rng([1, 2]))
    assert torch.equal(a, b)
    assert 0.015 < float(a.mean()) < 0.035
    assert float(a.max()) >= HIGHLIGHT - 0.1, "the kept highlight pins the top of the range"
    stretched, _ = normalise(a)
    assert float(stretched.mean()) < 0.05, "the min–max stretch must leave the picture dark"


def test_metrics_see_smearing_fading_and_a_line_along_the_top() -> None:
    target = _scene(1)
    perfect = dark_metrics(target, target)
    assert perfect["psnr"] > 60 and abs(perfect["texture"] - 1) < 1e-3 and abs(perfect["chroma"] - 1) < 1e-3
    smeared = F.avg_pool2d(F.pad(target, (3, 3, 3, 3), mode="reflect"), 7, stride=1)
    assert dark_metrics(smeared, target)["texture"] < 0.6
    grey = target.mean(dim=1, keepdim=True).expand_as(target)
    faded = 0.5 * target + 0.5 * grey
    assert abs(dark_metrics(faded, target)["chroma"] - 0.5) < 0.05
    assert perfect["hue"] < 0.5
    sepia = grey * torch.tensor([1.0, 0.8, 0.55]).view(1, 3, 1, 1)
    assert dark_metrics(sepia, target)["hue"] > 3 * dark_metrics(faded, target)["hue"] > 0, "a cast, not a fade"
    noisy = (target + 0.02 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    lined = noisy.clone()
    lined[..., :2, :] = 1.0
    assert dark_metrics(lined, target)["border"] > 2 * dark_metrics(noisy, target)["border"]
    assert abs(dark_metrics(0.5 * target, target)["exposure"] - 0.5) < 0.01
