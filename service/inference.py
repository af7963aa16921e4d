"""From one decoded image to batcher items and back: normalisation, α, tiling, bucketing, merging.

Each request normalises its whole image (the authors' min-max stretch), chooses α on a preview when
asked for ``auto``, then cuts the image into overlapping tiles when it is larger than the tile size.
Every tile (or small whole image) is padded at its bottom/right edge, by edge replication, up to a
multiple of ``bucket`` so that similar sizes share a batch; padding always happens, whatever the load,
so a given input always gives the same output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import pipeline
from model.tiling import TileMerger, Window, split_windows

from .batcher import BatchKey, Ticket


@dataclass(frozen=True)
class Geometry:
    tile_size: int
    tile_overlap: int
    bucket: int


def _pad(x: torch.Tensor, bucket: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = -h % bucket, -w % bucket
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


async def choose_alpha(ticket: Ticket, s: torch.Tensor, span: float, mode: str, *, last: bool = False) -> float:
    """Automatic α from a preview of the normalised image (computed by a worker); ``span``: the raw range."""
    small = pipeline.preview(s)
    key = BatchKey("alpha", mode, small.shape[-2], small.shape[-1])
    (alpha,) = await ticket.wait(ticket.submit(key, [small], [(None, span)], last=last))
    return float(alpha)


async def run_tiled(
    ticket: Ticket,
    s: torch.Tensor,
    span: float,
    op: str,
    mode: str,
    alpha: float | None,
    geo: Geometry,
    channels: int,
) -> torch.Tensor:
    """Run ``op`` on every tile of the normalised 1×3×H×W image ``s`` and blend the outputs (1×C×H×W)."""
    h, w = s.shape[-2:]
    windows = split_windows(h, w, geo.tile_size, geo.tile_overlap)  # one window when it fits
    groups: dict[BatchKey, list[Window]] = {}
    tiles: dict[BatchKey, list[torch.Tensor]] = {}
    for win in windows:
        tile = _pad(s[..., win.top : win.top + win.height, win.left : win.left + win.width], geo.bucket)
        key = BatchKey(op, mode, tile.shape[-2], tile.shape[-1], adjust=op == "decompose" and alpha is not None)
        groups.setdefault(key, []).append(win)
        tiles.setdefault(key, []).append(tile.contiguous())
    futures, order = [], []
    keys = list(groups)
    for i, key in enumerate(keys):
        futures += ticket.submit(key, tiles[key], [(alpha, span)] * len(tiles[key]), last=i == len(keys) - 1)
        order += groups[key]
    outputs = await ticket.wait(futures)
    if len(windows) == 1:
        return outputs[0][None, :, :h, :w]
    merger = TileMerger((1, channels, h, w), geo.tile_overlap)
    for win, out in zip(order, outputs, strict=True):
        merger.add(win, out[None, :, : win.height, : win.width])
    return merger.result()
