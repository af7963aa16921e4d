"""Overlapping tiles with linear blending, so peak memory depends on the tile size, not the image size.

Owns the tiling rule (:func:`check_tiling`, used by the service settings, its start-up and the CLI), the
windows (:func:`split_windows`), the blend (:class:`TileMerger`) and the loop that runs a function over
the tiles of an image (:func:`tiled`). Tile origins are multiples of ``TILE_ALIGN`` (16 = the restoration
net's total pooling factor) so each tile sees the same pooling grid as the whole image would, which keeps
seams invisible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

TILE_ALIGN = 16
MIN_TILE = 64


class TilingError(ValueError):
    """A tile size and overlap that cannot cover an image; ``tile``, ``overlap`` and the bounds say what fits."""

    def __init__(self, tile: int, overlap: int, align: int = TILE_ALIGN) -> None:
        self.tile, self.overlap, self.align = tile, overlap, align
        self.min_tile, self.max_overlap = min_tile_size(overlap, align), max_overlap(tile, align)
        super().__init__(
            f"tile size {tile} must exceed the tile overlap {overlap} plus {align} "
            f"(origins are rounded to multiples of {align}, which can eat that much of the overlap): "
            f"use a tile size of at least {self.min_tile} or an overlap of at most {self.max_overlap}"
        )


def min_tile_size(overlap: int, align: int = TILE_ALIGN) -> int:
    """The smallest tile size that works with ``overlap``."""
    return max(2 * overlap, overlap + align + 1, MIN_TILE)


def max_overlap(tile: int, align: int = TILE_ALIGN) -> int:
    """The largest overlap that works with ``tile`` (negative when none does)."""
    return min(tile // 2, tile - align - 1)


def check_tiling(tile: int, overlap: int, align: int = TILE_ALIGN) -> None:
    """The tiling rule: ``tile ≥ 2·overlap``, ``tile > overlap + align``, ``overlap ≥ 0``; else :class:`TilingError`.

    Rounding a window's origin up to ``align`` can eat up to ``align`` pixels of the overlap, so a tile no
    larger than ``overlap + align`` could not advance past its neighbour; one barely larger would advance a
    pixel at a time (a 300×200 image in 81-px tiles with a 64-px overlap is tens of thousands of tiles).
    Tiles at least twice the overlap cover each pixel a few times at most.
    """
    if overlap < 0 or tile < 2 * overlap or tile <= overlap + align:
        raise TilingError(tile, overlap, align)


class Window(NamedTuple):
    top: int
    left: int
    height: int
    width: int


def _spans(size: int, tile: int, overlap: int, align: int) -> tuple[list[int], int]:
    """Origins and common length of the fewest windows of at most ``tile`` covering ``size``, spread evenly.

    Spreading the windows evenly (rather than stepping by a fixed stride and squeezing the last one against
    the border) keeps overlaps near ``overlap``: a 1920×1080 image in 768-px tiles costs 2.4 instead of 3.5
    megapixels of network work.
    """
    if size <= tile:
        return [0], size
    slack = overlap + align  # rounding an origin up to `align` can eat up to `align` of the overlap
    n = 2
    while (length := -(-((n - 1) * slack + size) // n)) > tile:
        n += 1
    starts = sorted({-(-math.ceil(i * (size - length) / (n - 1)) // align) * align for i in range(n)})
    return starts, length


def split_windows(height: int, width: int, tile: int, overlap: int, align: int = TILE_ALIGN) -> list[Window]:
    """Windows of at most ``tile``×``tile`` covering the image, neighbours overlapping by ≥ ``overlap``.

    Origins are multiples of ``align``; all windows but those at the bottom/right border share one size.
    """
    check_tiling(tile, overlap, align)
    tops, h = _spans(height, tile, overlap, align)
    lefts, w = _spans(width, tile, overlap, align)
    return [Window(top, left, min(h, height - top), min(w, width - left)) for top in tops for left in lefts]


def blend_weight(window: Window, height: int, width: int, overlap: int) -> torch.Tensor:
    """1×1×h×w weights ramping up from the window's inner edges; full weight on the image border."""

    def ramp(n: int, at_start: bool, at_end: bool) -> torch.Tensor:
        w = torch.ones(n)
        r = min(overlap, n // 2)
        if r > 0:
            edge = (torch.arange(r, dtype=torch.float32) + 0.5) / r
            if not at_start:
                w[:r] = edge
            if not at_end:
                w[n - r :] = edge.flip(0)
        return w

    wy = ramp(window.height, window.top == 0, window.top + window.height == height)
    wx = ramp(window.width, window.left == 0, window.left + window.width == width)
    return (wy[:, None] * wx[None, :])[None, None]


class TileMerger:
    """Accumulates weighted tile outputs into one N×C×H×W canvas."""

    def __init__(self, shape: tuple[int, int, int, int], overlap: int) -> None:
        self.height, self.width = shape[-2:]
        self.overlap = overlap
        self.total = torch.zeros(shape)
        self.weight = torch.zeros(1, 1, self.height, self.width)

    def add(self, window: Window, tile: torch.Tensor) -> None:
        w = blend_weight(window, self.height, self.width, self.overlap)
        ys = slice(window.top, window.top + window.height)
        xs = slice(window.left, window.left + window.width)
        self.total[..., ys, xs] += tile.float().cpu() * w
        self.weight[..., ys, xs] += w

    def result(self) -> torch.Tensor:
        return self.total / self.weight.clamp_min(1e-8)


Progress = Callable[[int, int], None]  # (tiles done, tiles in all)


def tiled(
    run: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile_size: int,
    overlap: int,
    tiles_per_batch: int = 1,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Apply ``run`` to overlapping tiles of a 1×C×H×W image and blend them; the whole image when it fits.

    ``run`` maps an N×C×h×w batch of tiles to N×C'×h×w outputs; the canvas takes the first batch's C'.
    Equal-sized windows batch together, ``tiles_per_batch`` at a time (border windows can be smaller).
    ``progress`` is called after every batch with (tiles done, tiles in all).
    """
    h, w = image.shape[-2:]
    if max(h, w) <= tile_size:  # no tiling, so no tiling rule to meet
        out = run(image)
        if progress is not None:
            progress(1, 1)
        return out
    windows = split_windows(h, w, tile_size, overlap)
    merger: TileMerger | None = None
    by_shape: dict[tuple[int, int], list[Window]] = {}
    for win in windows:
        by_shape.setdefault((win.height, win.width), []).append(win)
    done = 0
    for group in by_shape.values():
        for i in range(0, len(group), tiles_per_batch):
            chunk = group[i : i + tiles_per_batch]
            batch = torch.cat([image[..., c.top : c.top + c.height, c.left : c.left + c.width] for c in chunk])
            out = run(batch)
            if merger is None:
                merger = TileMerger((1, out.shape[1], h, w), overlap)
            for win, tile in zip(chunk, out, strict=True):
                merger.add(win, tile[None])
            done += len(chunk)
            if progress is not None:
                progress(done, len(windows))
    assert merger is not None  # split_windows yields at least one window
    return merger.result()
