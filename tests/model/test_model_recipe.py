"""The enhancement recipe with the shipped bundle: what a user would see go wrong, on small synthetic images.

Each test is built to fail for one plausible slip in the recipe (see ``docs/testing.md``): tiles blended
with flat weights or pasted over each other (seams), inputs padded on the wrong side (a shifted output),
photo mode without its chroma noise reduction (colour speckle), and a per-channel instead of a whole-image
stretch (colour casts neutralised).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kind_serve.model import KinD

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "kind-sice"
REC709 = torch.tensor([0.2125, 0.7154, 0.0721]).view(1, 3, 1, 1)


def textured(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A dim image with smooth colour waves and sharp-edged 8-px blocks: structure at every scale."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    waves = torch.stack(
        [0.3 + 0.4 * torch.sin(9 * xx + 3 * yy) ** 2, 0.3 + 0.3 * torch.cos(7 * yy - 2 * xx) ** 2, 0.2 + 0.3 * xx * yy]
    )[None]
    blocks = F.interpolate(torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=gen), size=(h, w), mode="nearest")
    return (0.25 * (0.6 * waves + 0.4 * blocks)).clamp(0, 1)


def seam_jump(error: torch.Tensor) -> float:
    """Largest step, between two neighbouring columns or rows, of the column/row mean of |error| (in 1/255).

    A seam is a line along which the tiled output suddenly departs from the whole-image output.
    """
    e = error.abs().mean(dim=1)[0]
    cols, rows = e.mean(dim=0), e.mean(dim=1)
    return 255 * max(float((cols[1:] - cols[:-1]).abs().max()), float((rows[1:] - rows[:-1]).abs().max()))


def test_tiled_output_matches_the_whole_image_without_seams(kind: KinD) -> None:
    x = textured(224, 288)
    whole, alpha = kind.enhance_tensor(x, 3.0, "photo", tile_size=1024)
    tiled, _ = kind.enhance_tensor(x, 3.0, "photo", tile_size=160)  # 2×3 tiles, 64-px overlaps (bundle's)
    assert tiled.shape == whole.shape == x.shape and alpha == 3.0
    error = tiled - whole
    psnr = 10 * math.log10(1 / float(error.pow(2).mean()))
    # linear ramps: ≈ 45 dB, largest jump ≈ 1.5/255; flat weights: 41 dB, 9/255; pasted tiles: 37 dB, 19/255
    assert psnr >= 42, f"tiled vs whole image: {psnr:.1f} dB"
    assert seam_jump(error) < 4, f"a seam of {seam_jump(error):.1f}/255 where tiles meet"


def _edges(x: torch.Tensor) -> torch.Tensor:
    luma = (x * REC709).sum(dim=1)[0]
    return (luma[1:, 1:] - luma[:-1, 1:]).abs() + (luma[1:, 1:] - luma[1:, :-1]).abs()


def best_shift(a: torch.Tensor, b: torch.Tensor, reach: int = 16) -> tuple[int, int]:
    """The (dy, dx) that best aligns ``b``'s edges with ``a``'s (cross-correlation of the edge maps)."""
    ea, eb = _edges(a), _edges(b)
    ea, eb = (ea - ea.mean()) / ea.norm(), (eb - eb.mean()) / eb.norm()
    h, w = ea.shape
    scores = {}
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            pa = ea[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
            pb = eb[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
            scores[dy, dx] = float((pa * pb).sum())
    return max(scores, key=scores.get)


@pytest.mark.parametrize(("h", "w"), [(30, 50), (47, 33)])
def test_output_is_aligned_with_the_input(kind: KinD, h: int, w: int) -> None:
    """Sides that are not multiples of the canvas (32) get padded; the output must not move by the padding."""
    x = textured(h, w, seed=3)
    out, _ = kind.enhance_tensor(x, 3.0, "paper")
    assert out.shape == x.shape
    assert best_shift(x, out) == (0, 0)


def _chroma_speckle(rgb: torch.Tensor) -> float:
    """Std of the fine detail (what a 5×5 box blur removes) in the colour differences from luminance."""
    chroma = rgb - (rgb * REC709).sum(dim=1, keepdim=True)
    detail = chroma - F.avg_pool2d(chroma, 5, 1, 2, count_include_pad=False)
    return float(detail[..., 8:-8, 8:-8].std())


def test_photo_mode_removes_the_colour_speckle_that_paper_mode_keeps(kind: KinD) -> None:
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    scene = torch.stack([0.3 + 0.5 * xx, 0.3 + 0.4 * yy, 0.5 - 0.2 * xx * yy])[None] * 0.5
    noisy = (scene + 0.05 * torch.randn(scene.shape, generator=gen)).clamp(0, 1)
    s = (noisy - noisy.min()) / (noisy.max() - noisy.min())  # already normalised: forward takes S
    with torch.inference_mode():
        paper = kind(s, 3.0, "paper")
        photo = kind(s, 3.0, "photo", span=0.0)  # span 0: no weight on S, the brightened branch alone
    # with the chroma noise reduction ≈ 0.1× paper's speckle; without it, as much as paper's
    assert _chroma_speckle(photo) < 0.3 * _chroma_speckle(paper)


@pytest.mark.parametrize("mode", ["paper", "photo"])
def test_a_colour_cast_survives_the_normalisation(kind: KinD, mode: str) -> None:
    """One stretch over all channels keeps a warm scene warm; per-channel stretching would turn it grey."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 60), torch.linspace(0, 1, 80), indexing="ij")
    texture = 0.5 + 0.3 * torch.sin(20 * xx) * torch.cos(15 * yy) + 0.2 * torch.rand(60, 80, generator=gen)
    warm = torch.stack([texture * 0.20, texture * 0.10, texture * 0.04])[None]  # blue/red = 0.2
    out, _ = kind.enhance_tensor(warm, 3.0, mode)
    red, green, blue = out.mean(dim=(0, 2, 3)).tolist()
    # kept: blue/red ≈ 0.28; a per-channel stretch gives ≈ 1.0
    assert blue < green < red and blue / red < 0.5, (red, green, blue)
