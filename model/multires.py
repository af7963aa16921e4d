"""The fast path for large photos: the networks at half resolution, their maps lifted back with the input's detail.

``quality="fast"`` runs the decomposition and the restoration on S downscaled :data:`FAST_FACTOR` times
(antialiased), upsamples R, L and R̂, and brings the input's own detail back into them: the detail is S minus its
upsampled low-resolution copy, divided by the upsampled L (Retinex: S = R·L, so detail in S is detail in R
times L). R takes all of it; R̂ takes it weighted by 1 / (1 + (n / :data:`NOISE_SIGMA`)²), n the local noise
level — the local RMS of what the restoration removed at low resolution — so flat noisy regions stay as the
restoration left them while textured, clean ones get their fine detail back.

Against the full path on real 2–12 MP photos (docs/performance.md, ``scripts/multires_check.py``) it is
1.8–2.9× faster at 29–34 dB PSNR and SSIM 0.90–0.98 to the full result: visibly softer fine texture at 100 %,
so it is an option, never the default. Images of at most :data:`FAST_MIN_PIXELS` pixels take the full path
whatever the quality asked for: there the networks are quick anyway.

:mod:`model.recipe` and the service run it the same way: :func:`reduce` before the networks' tiles,
:func:`lift` after them.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F

Quality = Literal["full", "fast"]
QUALITIES: tuple[str, ...] = get_args(Quality)
FAST_FACTOR = 2
# 2 MP: a phone's preview-sized image; below it the full path takes a few seconds on a CPU
FAST_MIN_PIXELS = 2_000_000
# noise level (RMS, in S's [0, 1] units) at which R̂ takes half of the input's detail back
NOISE_SIGMA = 0.02
# the window of the local noise level, in low-resolution pixels
NOISE_WINDOW = 7
# L below this is too dark to divide by: detail there would be amplified noise
L_FLOOR = 0.02


def check_quality(quality: str) -> Quality:
    """``quality`` as a :data:`Quality`; a ValueError that lists the choices otherwise."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, not {quality!r}")
    return cast(Quality, quality)


def uses_reduction(quality: Quality, height: int, width: int) -> bool:
    """Whether an image of this size takes the reduced path at this quality."""
    return quality == "fast" and height * width > FAST_MIN_PIXELS


def reduce(s: torch.Tensor) -> torch.Tensor:
    """S (1×3×H×W) downscaled :data:`FAST_FACTOR` times, antialiased: what the networks see on the fast path."""
    return F.interpolate(s, scale_factor=1 / FAST_FACTOR, mode="bilinear", antialias=True, align_corners=False)


def lift(s: torch.Tensor, low: torch.Tensor, networks: torch.Tensor) -> torch.Tensor:
    """The networks' full-resolution 1×7×H×W output (R, L, R̂) from their output on ``low`` = :func:`reduce` (S)."""
    size = s.shape[-2:]

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    networks = networks.float()
    reflectance, illumination, restored = networks[:, :3], networks[:, 3:4], networks[:, 4:7]
    removed = (reflectance - restored).square().mean(dim=1, keepdim=True)
    noise = F.avg_pool2d(removed, NOISE_WINDOW, stride=1, padding=NOISE_WINDOW // 2, count_include_pad=False).sqrt()
    weight = 1 / (1 + (up(noise) / NOISE_SIGMA) ** 2)
    l_up = up(illumination)
    detail = (s.float() - up(low.float())).div_(l_up.clamp_min(L_FLOOR))
    out = torch.empty((1, 7, *size), dtype=torch.float32)
    torch.add(up(reflectance), detail, out=out[:, :3]).clamp_(0, 1)
    out[:, 3:4] = l_up
    torch.addcmul(up(restored), weight, detail, out=out[:, 4:7]).clamp_(0, 1)
    return out
