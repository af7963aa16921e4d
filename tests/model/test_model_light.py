"""The light level (one type, parsed once) and the tiling rule (one function), as the front ends use them."""

from __future__ import annotations

import pytest
import torch

from kind_serve.model import ALPHA_MAX, ALPHA_MIN, AUTO, AlphaError, LightLevel, TilingError, check_tiling
from kind_serve.model.tiling import split_windows, tiled


def test_equal_levels_share_one_spelling_for_cache_keys_and_etags() -> None:
    assert str(LightLevel.parse("2.50")) == str(LightLevel.parse(2.5)) == str(LightLevel(2.5)) == "2.5"
    assert str(LightLevel.parse(" Auto ")) == str(AUTO) == "auto"
    assert LightLevel.parse(LightLevel(3.0)) == LightLevel(3.0)  # already parsed: passed on unchanged


@pytest.mark.parametrize("bad", [True, ALPHA_MIN / 2, ALPHA_MAX * 2, float("nan"), "1e9", "3,5"])
def test_a_level_outside_the_range_or_not_a_number_is_refused_with_the_range(bad: object) -> None:
    with pytest.raises(AlphaError, match="alpha must be 'auto'"):
        LightLevel.parse(bad)  # type: ignore[arg-type]


def test_the_tiling_rule_names_what_fits() -> None:
    check_tiling(128, 64)  # tiles at least twice the overlap
    check_tiling(64, 16)
    for tile, overlap in ((72, 64), (127, 64), (32, 16)):  # (32, 16): the 16-px origin grid eats the overlap
        with pytest.raises(TilingError):
            check_tiling(tile, overlap)
    with pytest.raises(TilingError, match="at least 128 or an overlap of at most 36") as info:
        check_tiling(72, 64)
    assert (info.value.min_tile, info.value.max_overlap) == (128, 36)
    with pytest.raises(TilingError):
        check_tiling(128, -1)


def test_the_smallest_allowed_tile_covers_a_300x200_image_in_few_tiles() -> None:
    # the case the rule was missing: KIND_TILE_SIZE=72 passed start-up, then such an upload failed with a 500
    windows = split_windows(200, 300, 128, 64)
    assert len(windows) <= 15
    cover = torch.zeros(200, 300)
    for w in windows:
        cover[w.top : w.top + w.height, w.left : w.left + w.width] += 1
    assert cover.min() >= 1
    x = torch.rand(1, 3, 200, 300)
    torch.testing.assert_close(tiled(lambda b: b * 2, x, 128, 64, tiles_per_batch=4), x * 2)


def test_tiled_reports_progress_per_batch() -> None:
    seen: list[tuple[int, int]] = []
    tiled(
        lambda b: b, torch.rand(1, 3, 200, 300), 128, 32, tiles_per_batch=2, progress=lambda d, n: seen.append((d, n))
    )
    assert seen[-1][0] == seen[-1][1] > 1 and [d for d, _ in seen] == sorted(d for d, _ in seen)
