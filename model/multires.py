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
# rows lifted at once: a band's float32 working set (11 upsampled channels and the detail) is ~40 MB at 4000 px
LIFT_BAND = 256


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


def lift(s: torch.Tensor, low: torch.Tensor, networks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The networks' full-resolution R, L, R̂ (1×7×H×W) from their output on ``low`` = :func:`reduce` (S), written
    into ``out`` (any float dtype: the parts' own slots) and returned.

    Works in bands of :data:`LIFT_BAND` rows, so the float32 working set is a band's, not the image's (a 12 MP
    image's was a gigabyte). Upsampling is by exactly :data:`FAST_FACTOR` (the low maps padded by a row and a
    column, so odd sides are covered), the inverse of :func:`reduce`'s geometry, which lets each band read its
    rows of the low maps with one row of context and come out as the whole image would.
    """
    height, width = s.shape[-2:]
    networks = networks.float()
    reflectance, restored = networks[:, :3], networks[:, 4:7]
    removed = (reflectance - restored).square().mean(dim=1, keepdim=True)
    noise = F.avg_pool2d(removed, NOISE_WINDOW, stride=1, padding=NOISE_WINDOW // 2, count_include_pad=False).sqrt()
    # what every band upsamples: the low S (0:3), R (3:6), L (6), R̂ (7:10), the noise level (10)
    maps = F.pad(torch.cat([low.float(), networks, noise], dim=1), (0, 1, 0, 1), mode="replicate")
    for top in range(0, height, LIFT_BAND):
        bottom = min(top + LIFT_BAND, height)
        first = max(top // FAST_FACTOR - 1, 0)  # one low row of context above, one below
        last = min(-(-bottom // FAST_FACTOR) + 1, maps.shape[-2])
        up = F.interpolate(maps[..., first:last, :], scale_factor=FAST_FACTOR, mode="bilinear", align_corners=False)
        up = up[..., top - first * FAST_FACTOR : bottom - first * FAST_FACTOR, :width]
        s_low, r_up, l_up, restored_up, noise_up = up[:, :3], up[:, 3:6], up[:, 6:7], up[:, 7:10], up[:, 10:]
        detail = (s[..., top:bottom, :].float() - s_low).div_(l_up.clamp_min(L_FLOOR))
        weight = (noise_up / NOISE_SIGMA).square_().add_(1).reciprocal_()
        band = out[..., top:bottom, :]
        band[:, :3] = r_up.add_(detail).clamp_(0, 1)
        band[:, 3:4] = l_up
        band[:, 4:7] = restored_up.addcmul_(weight, detail).clamp_(0, 1)
    return out
