"""Overlapping tiles with linear blending, so peak memory depends on the tile size, not the image size.

Owns the tiling rule (:func:`check_tiling`, used by the service settings, its start-up and the CLI), the
windows (:func:`split_windows`, whose canvases hold at most ``tile``² pixels), the blend (:class:`TileMerger`)
and the loop that runs a function over the tiles of an image (:func:`tiled`). Tile origins are multiples of
``TILE_ALIGN`` (16 = the restoration net's total pooling factor) so each tile sees the same pooling grid as the
whole image would, which keeps seams invisible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

TILE_ALIGN = 16
MIN_TILE = 64
CANVAS_MULTIPLE = 32


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


def _length(size: int, n: int, overlap: int, align: int) -> int:
    """The common length of ``n`` windows covering ``size`` with neighbours overlapping by ≥ ``overlap``."""
    slack = overlap + align  # rounding an origin up to `align` can eat up to `align` of the overlap
    return size if n == 1 else -(-((n - 1) * slack + size) // n)


def _count(size: int, tile: int, overlap: int, align: int) -> int:
    """The fewest windows of at most ``tile`` that cover ``size``."""
    n = 1
    while _length(size, n, overlap, align) > tile:
        n += 1
    return n


def _starts(size: int, n: int, length: int, align: int) -> list[int]:
    """``n`` origins of ``length``-long windows spread evenly over ``size``, rounded up to ``align``.

    Spreading the windows evenly (rather than stepping by a fixed stride and squeezing the last one against
    the border) keeps overlaps near the asked one.
    """
    if n == 1:
        return [0]
    return sorted({-(-math.ceil(i * (size - length) / (n - 1)) // align) * align for i in range(n)})


def split_windows(height: int, width: int, tile: int, overlap: int, align: int = TILE_ALIGN) -> list[Window]:
    """Windows covering the image with the least network work, neighbours overlapping by ≥ ``overlap``.

    ``tile`` bounds a window's *area*: its canvas (the window rounded up to ``CANVAS_MULTIPLE``, what the
    networks run on) holds at most ``tile``² pixels, with sides of at most ``2·tile``. The networks' memory is
    proportional to the canvas's area, not to its shape, so among the grids that respect the bound the one
    with the fewest canvas pixels in all is taken: a 1500×2000 image (a 12 MP photo at half resolution) in
    768-px tiles takes 2×3 windows of 790×720 instead of 3×3 of 554×720, 7 % less work. Origins are multiples
    of ``align``; all windows but those at the bottom/right border share one size.
    """
    check_tiling(tile, overlap, align)

    def canvas(length: int) -> int:
        return -(-length // CANVAS_MULTIPLE) * CANVAS_MULTIPLE

    # the fewest windows of at most tile a side: more per axis would only add overlap; this grid is also the
    # fallback when no grid's canvases fit tile² (a tile that is not a multiple of CANVAS_MULTIPLE)
    rows, cols = _count(height, tile, overlap, align), _count(width, tile, overlap, align)
    best: tuple[tuple[int, int], int, int] | None = None
    for ny in range(1, rows + 1):
        for nx in range(1, cols + 1):
            h, w = canvas(_length(height, ny, overlap, align)), canvas(_length(width, nx, overlap, align))
            if h * w <= tile * tile and max(h, w) <= 2 * tile:
                cost = (ny * nx * h * w, ny * nx)
                if best is None or cost < best[0]:
                    best = cost, ny, nx
    ny, nx = (best[1], best[2]) if best else (rows, cols)
    h, w = _length(height, ny, overlap, align), _length(width, nx, overlap, align)
    tops, lefts = _starts(height, ny, h, align), _starts(width, nx, w, align)
    return [Window(top, left, min(h, height - top), min(w, width - left)) for top in tops for left in lefts]


def _ramp(n: int, at_start: bool, at_end: bool, overlap: int) -> torch.Tensor:
    """One axis of a window's blend weight (the weight is the product of its two axes): ramping up from the
    window's inner edges, full on the image border."""
    w = torch.ones(n)
    r = min(overlap, n // 2)
    if r > 0:
        edge = (torch.arange(r, dtype=torch.float32) + 0.5) / r
        if not at_start:
            w[:r] = edge
        if not at_end:
            w[n - r :] = edge.flip(0)
    return w


class TileMerger:
    """Blends tile outputs into ``canvas`` (N×C×H×W, any float dtype) as they arrive, in any order (a float16
    canvas rounds each sum, so its bytes follow the order).

    Each tile is weighted by its ramps (:func:`_ramp`) over the sum of the weights at each pixel, so the canvas
    is complete once every window has been added, with no division pass and no float32 copy of it: a
    float16 canvas (the service's cached parts) is blended in place. The windows must form a grid (as
    :func:`split_windows`' do): each weight is a row ramp times a column ramp, so their sum is the product
    of the rows' sum and the columns' sum, two vectors instead of an H×W map.
    """

    def __init__(self, canvas: torch.Tensor, windows: Sequence[Window], overlap: int) -> None:
        self.canvas = canvas.zero_()
        self.height, self.width = canvas.shape[-2:]
        self.overlap = overlap
        rows = sorted({(w.top, w.height) for w in windows})
        cols = sorted({(w.left, w.width) for w in windows})
        if len(rows) * len(cols) != len(windows):
            raise ValueError("TileMerger needs windows on a grid, as split_windows makes them")
        self.row_sum, self.col_sum = self._axis_sum(rows, self.height), self._axis_sum(cols, self.width)

    def _axis_sum(self, spans: list[tuple[int, int]], size: int) -> torch.Tensor:
        total = torch.zeros(size)
        for start, n in spans:
            total[start : start + n] += _ramp(n, start == 0, start + n == size, self.overlap)
        return total

    def add(self, window: Window, tile: torch.Tensor) -> None:
        ys = slice(window.top, window.top + window.height)
        xs = slice(window.left, window.left + window.width)
        wy = _ramp(window.height, window.top == 0, ys.stop == self.height, self.overlap) / self.row_sum[ys]
        wx = _ramp(window.width, window.left == 0, xs.stop == self.width, self.overlap) / self.col_sum[xs]
        self.canvas[..., ys, xs] += tile.float().cpu() * (wy[:, None] * wx[None, :])


Progress = Callable[[int, int], None]  # (tiles done, tiles in all)


def canvas_multiple(bucket: int = 1) -> int:
    """The side multiple of the canvases the networks run on: ``CANVAS_MULTIPLE``, or a multiple of ``bucket``.

    A batcher that pads to coarser size buckets than ``CANVAS_MULTIPLE`` gets larger canvases, and so
    outputs that differ slightly near the bottom/right border from the library's.
    """
    return math.lcm(CANVAS_MULTIPLE, bucket)


def pad_to_canvas(x: torch.Tensor, multiple: int = CANVAS_MULTIPLE) -> torch.Tensor:
    """``x`` padded at its bottom/right, by edge replication, to sides that are multiples of ``multiple``.

    Unconditional (a zero pad is a copy), so that a graph export with dynamic sizes traces one path.
    """
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")


def canvas_window(window: Window, height: int, width: int, multiple: int = CANVAS_MULTIPLE) -> Window:
    """The region of the padded image (:func:`pad_to_canvas`) that the networks see for ``window``.

    The networks' output near a border depends on what lies beyond it for about 100 px (the restoration
    U-Net's reach), so every front end must run them on the same canvas, not only the same pixels: the
    window's sides rounded up to ``multiple`` (so a batcher's size buckets add nothing), grown forward into
    the image, or backward at the bottom/right border so that it ends where the padded image ends, as the
    whole image's canvas does. Origins stay multiples of 16: the pooling grid is the whole image's.
    """

    def grow(start: int, length: int, size: int) -> tuple[int, int]:
        padded = -(-size // multiple) * multiple
        n = -(-length // multiple) * multiple
        return min(start + n, padded) - n, n

    top, h = grow(window.top, window.height, height)
    left, w = grow(window.left, window.width, width)
    return Window(top, left, h, w)


def on_canvas(image: torch.Tensor, window: Window, multiple: int = CANVAS_MULTIPLE) -> tuple[torch.Tensor, Window]:
    """The networks' input for ``window`` of ``image`` (:func:`canvas_window`) and where the window lies in it.

    A view of ``image`` where the canvas lies inside it; a padded copy of the canvas alone at the bottom/right
    border, never of the whole image.
    """
    height, width = image.shape[-2:]
    c = canvas_window(window, height, width, multiple)
    tile = image[..., c.top : min(c.top + c.height, height), c.left : min(c.left + c.width, width)]
    if tile.shape[-2:] != (c.height, c.width):
        tile = pad_to_canvas(tile, multiple)
    return tile, Window(window.top - c.top, window.left - c.left, window.height, window.width)


def crop(output: torch.Tensor, window: Window) -> torch.Tensor:
    return output[..., window.top : window.top + window.height, window.left : window.left + window.width]


def tiled(
    run: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile_size: int,
    overlap: int,
    tiles_per_batch: int = 1,
    progress: Progress | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply ``run`` to overlapping tiles of a 1×C×H×W image and blend them; the whole image when it fits
    (:func:`split_windows`' area bound).

    ``run`` maps an N×C×h×w batch to N×C'×h×w outputs; the result takes the first batch's C'. It sees each
    tile (or the whole image) on its canvas (:func:`canvas_window`); its output is cropped back.
    Equal-sized canvases batch together, ``tiles_per_batch`` at a time (border ones can be smaller).
    ``progress`` is called after every batch with (tiles done, tiles in all). ``out``: a 1×C'×H×W canvas
    (any float dtype, e.g. a slice of a larger tensor) to blend into and return, instead of a new float32 one.
    """
    h, w = image.shape[-2:]
    # an image within one tile needs no tiling rule: tiny tile settings still run it whole
    windows = [Window(0, 0, h, w)] if max(h, w) <= tile_size else split_windows(h, w, tile_size, overlap)
    fits = len(windows) == 1
    by_shape: dict[tuple[int, int], list[Window]] = {}
    for win in windows:
        c = canvas_window(win, h, w)
        by_shape.setdefault((c.height, c.width), []).append(win)
    merger: TileMerger | None = None
    done = 0
    for group in by_shape.values():
        for i in range(0, len(group), tiles_per_batch):
            chunk = group[i : i + tiles_per_batch]
            tiles, where = zip(*(on_canvas(image, win) for win in chunk), strict=True)  # copies per batch only
            y = run(torch.cat(tiles))
            if fits:
                if progress is not None:
                    progress(1, 1)
                return crop(y, where[0]) if out is None else out.copy_(crop(y, where[0]))
            if merger is None:
                canvas = torch.empty((1, y.shape[1], h, w)) if out is None else out
                merger = TileMerger(canvas, windows, overlap)
            for win, at, tile in zip(chunk, where, y, strict=True):
                merger.add(win, crop(tile[None], at))
            done += len(chunk)
            if progress is not None:
                progress(done, len(windows))
    assert merger is not None  # split_windows yields at least one window
    return merger.canvas
