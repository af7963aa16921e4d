"""Re-lighting from kept parts (model.parts, model.recipe.compute_parts / relight) with the shipped bundle.

A new α on kept parts must give the output the whole recipe gives (within 1/255), whatever the mode, fixed
or automatic α, tiled or not; a tiled re-lighting must equal a whole-image one (the halo covers the
composition's reach); and the exposure gain must be the ratio of mean luminances it claims to be.
"""

from __future__ import annotations

import pytest
import torch

from kind_serve.model import AUTO, KinD, LightLevel, recipe
from kind_serve.model.compose import luminance
from kind_serve.model.parts import (
    ADJUST_REACH,
    CHANNELS,
    PARTS_DTYPE,
    RELIGHT_HALO,
    adjust_windows,
    relight_windows,
)
from kind_serve.model.tiling import Window

from .test_model_recipe import textured

STEP = 1 / 255


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return textured(200, 264, seed=5) * 0.5 + 0.01  # dim, with no pixel at 0: the stretch has work to do


@pytest.mark.parametrize("mode", ["photo", "paper"])
@pytest.mark.parametrize("light", [LightLevel(4.0), AUTO], ids=["fixed", "auto"])
@pytest.mark.parametrize("tile", [128, 1024], ids=["tiled", "whole"])
def test_relighting_kept_parts_gives_the_uncached_output(
    kind: KinD, photo: torch.Tensor, mode: str, light: LightLevel, tile: int
) -> None:
    """Parts kept in float16 and re-lit after another α equal a fresh float32 run of the whole recipe."""
    want, want_alpha = recipe.enhance(kind, photo, light, mode, tile_size=tile)
    kept = recipe.compute_parts(kind, photo, tile_size=tile, dtype=PARTS_DTYPE)
    assert kept.maps.dtype == PARTS_DTYPE and kept.maps.shape == (1, CHANNELS, 200, 264)
    recipe.relight(kind, kept, LightLevel(9.0), mode, tile_size=tile)  # another α first: nothing may stick
    got, alpha = recipe.relight(kind, kept, light, mode, tile_size=tile)
    assert alpha == want_alpha and (light.auto or alpha == 4.0)
    error = float((got - want).abs().max())
    assert error <= STEP, f"re-lit from kept parts vs uncached: {error * 255:.2f}/255"
    exact = recipe.compute_parts(kind, photo, tile_size=tile)  # float32, as enhance keeps them
    again, _ = recipe.relight(kind, exact, light, mode, tile_size=tile)
    assert torch.equal(again, want), "enhance is compute_parts + relight, nothing else"


def test_auto_alpha_from_parts_is_the_one_chosen_on_the_whole_image(kind: KinD, photo: torch.Tensor) -> None:
    parts = recipe.compute_parts(kind, photo)
    s = (photo - photo.min()) / (photo.max() - photo.min())
    for mode in ("photo", "paper"):
        whole = recipe.choose_alpha(kind, s, mode, parts.span)
        assert recipe.relight(kind, parts, AUTO, mode)[1] == whole


def test_tiled_relighting_equals_the_whole_image_relighting(kind: KinD, photo: torch.Tensor) -> None:
    """The halo covers the chroma blur, the gain cells and the adjustment net: tiles leave no trace at all."""
    parts = recipe.compute_parts(kind, photo)
    whole, _ = recipe.relight(kind, parts, LightLevel(6.0), "photo", tile_size=1024)
    tiled, _ = recipe.relight(kind, parts, LightLevel(6.0), "photo", tile_size=64)  # 2×3 cores of 128 px
    assert float((tiled - whole).abs().max()) < 1e-5


@pytest.mark.parametrize(("h", "w", "tile"), [(200, 264, 64), (31, 17, 16), (500, 100, 768), (130, 130, 100)])
def test_relight_cores_cover_the_image_once_inside_their_regions(h: int, w: int, tile: int) -> None:
    count = torch.zeros(h, w, dtype=torch.int32)
    for where, core in relight_windows(h, w, tile):
        assert where.top % 16 == 0 and where.left % 16 == 0  # the gain limit's cells on the image's grid
        assert where.top + where.height <= h and where.left + where.width <= w
        assert core.top + core.height <= where.height and core.left + core.width <= where.width
        assert core.height <= tile and core.width <= tile
        at = Window(where.top + core.top, where.left + core.left, core.height, core.width)
        count[at.top : at.top + at.height, at.left : at.left + at.width] += 1
        inner_border = (
            core.top,
            core.left,
            where.height - core.top - core.height,
            where.width - core.left - core.width,
        )
        outer = (at.top, at.left, h - at.top - at.height, w - at.left - at.width)
        assert all(m >= min(RELIGHT_HALO, o) for m, o in zip(inner_border, outer, strict=True)), "a halo too short"
    assert bool((count == 1).all())


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize(("h", "w", "tile"), [(200, 264, 64), (31, 17, 16), (130, 130, 100)])
def test_adjust_windows_cover_the_image_once_with_the_nets_reach(h: int, w: int, tile: int, scale: int) -> None:
    """The adjustment net's windows: cores as the composition's, context just the net's reach (at ``scale``, on
    the blocks' grid, plus the bilinear upsampling's pixel), so each pixel's L̂ is computed once and exactly."""
    reach = ADJUST_REACH if scale == 1 else scale * (ADJUST_REACH + 1)
    count = torch.zeros(h, w, dtype=torch.int32)
    for (where, core), (region, composed) in zip(
        adjust_windows(h, w, tile, scale), relight_windows(h, w, tile), strict=True
    ):
        assert where.top % scale == 0 and where.left % scale == 0
        at = Window(where.top + core.top, where.left + core.left, core.height, core.width)
        assert at == Window(region.top + composed.top, region.left + composed.left, composed.height, composed.width)
        count[at.top : at.top + at.height, at.left : at.left + at.width] += 1
        context = (core.top, core.left, where.height - core.top - core.height, where.width - core.left - core.width)
        outer = (at.top, at.left, h - at.top - at.height, w - at.left - at.width)
        assert all(reach <= c or c == o for c, o in zip(context, outer, strict=True)), "a reach too short"
        assert all(c < reach + scale for c in context), "more context than the net needs"
    assert bool((count == 1).all())


def test_exposure_gain_is_the_ratio_of_mean_luminances(kind: KinD, photo: torch.Tensor) -> None:
    parts = recipe.compute_parts(kind, photo, dtype=PARTS_DTYPE)
    assert parts.mean_luminance == pytest.approx(float(luminance(photo).mean()), rel=1e-4)
    out, _ = recipe.relight(kind, parts, LightLevel(5.0), "paper")
    gain = parts.exposure_gain(out)
    assert gain == pytest.approx(float(luminance(out).mean() / luminance(photo).mean()), rel=1e-4)
    assert gain > 1.5  # α 5 on a dim photo: much lighter
    assert parts.nbytes == 24 * 200 * 264 + parts.preview.nelement() * 4  # float16: 24 bytes per pixel
