"""A request's model work through the batcher: light level, tiles, size buckets, merged outputs.

The steps are :mod:`model.recipe`'s, split so that the batcher can put work of many requests in one batch:
the request's whole image is normalised once (:mod:`service.payloads`); "auto" is resolved on a preview of
it by a worker (one α for every tile); the image is cut into overlapping tiles when it is larger than the
tile size; every tile (or small whole image) goes to the networks on the canvas the library uses
(:func:`model.tiling.canvas_window`: sides rounded up to a multiple of 32, or of a coarser ``bucket``),
which also makes similar sizes share a batch. This happens whatever the load, so a given input always gives
the library's output (exactly, for a ``bucket`` that divides 32). Each item carries ``(LightLevel, span)``
to the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import InferenceDefaults, LightLevel, TilingError
from model.auto_alpha import preview
from model.tiling import TileMerger, Window, canvas_multiple, check_tiling, crop, on_canvas, split_windows

from .batcher import BatchKey, Ticket
from .config import Settings
from .metrics import Metrics


@dataclass(frozen=True)
class Geometry:
    """How a request's image is cut for the batcher: tile size and overlap (checked), size bucket."""

    tile_size: int
    tile_overlap: int
    bucket: int


def geometry(settings: Settings, defaults: InferenceDefaults) -> Geometry:
    """The tiling in use: ``KIND_TILE_SIZE``/``KIND_TILE_OVERLAP`` else the bundle's, checked by the one rule.

    ValueError naming the settings to change when the pair fails :func:`model.check_tiling`.
    """
    tile = settings.tile_size or defaults.tile_size
    overlap = settings.tile_overlap if settings.tile_overlap is not None else defaults.tile_overlap
    try:
        check_tiling(tile, overlap)
    except TilingError as exc:
        source = "KIND_TILE_SIZE" if settings.tile_size else "the bundle's tile_size"
        source += " with " + ("KIND_TILE_OVERLAP" if settings.tile_overlap is not None else "the bundle's tile_overlap")
        raise ValueError(
            f"{source}: {exc}. Set KIND_TILE_SIZE to at least {exc.min_tile} or KIND_TILE_OVERLAP to at most "
            f"{exc.max_overlap} (--tile-size / --tile-overlap)"
        ) from None
    return Geometry(tile_size=tile, tile_overlap=overlap, bucket=settings.bucket_multiple)


@dataclass(frozen=True)
class ServedModel:
    """What the routes need of the loaded model: its version, the bundle's defaults, the tiling in use."""

    version: str
    defaults: InferenceDefaults
    geometry: Geometry


def _count(metrics: Metrics, op: str, s: torch.Tensor) -> None:
    metrics.images.labels(op).inc()
    metrics.megapixels.labels(op).inc(s.shape[-2] * s.shape[-1] / 1e6)


async def resolve_light(ticket: Ticket, s: torch.Tensor, span: float, light: LightLevel, mode: str) -> LightLevel:
    """``light`` when fixed; for "auto", the level a worker chooses on a preview of the normalised image."""
    if not light.auto:
        return light
    small = preview(s)
    key = BatchKey("alpha", mode, small.shape[-2], small.shape[-1])
    (alpha,) = await ticket.wait(ticket.submit(key, [small], [(light, span)], last=False))
    return LightLevel(alpha)


async def run_tiled(
    ticket: Ticket,
    s: torch.Tensor,
    span: float,
    op: str,
    mode: str,
    light: LightLevel | None,
    geo: Geometry,
    channels: int,
) -> torch.Tensor:
    """Run ``op`` on every tile of the normalised 1×3×H×W image ``s`` and blend the outputs (1×C×H×W)."""
    h, w = s.shape[-2:]
    windows = split_windows(h, w, geo.tile_size, geo.tile_overlap)  # one window when it fits
    multiple = canvas_multiple(geo.bucket)
    groups: dict[BatchKey, list[tuple[Window, Window]]] = {}
    tiles: dict[BatchKey, list[torch.Tensor]] = {}
    for win in windows:
        tile, at = on_canvas(s, win, multiple)  # the library's canvas, so the output is the library's
        key = BatchKey(op, mode, tile.shape[-2], tile.shape[-1], adjust=op == "decompose" and light is not None)
        groups.setdefault(key, []).append((win, at))
        tiles.setdefault(key, []).append(tile.contiguous())
    # admission by estimated model time; sets the deadline from it (service.workload)
    ticket.plan(op, sum(t.shape[-2] * t.shape[-1] for ts in tiles.values() for t in ts), len(windows), h * w)
    futures, order = [], []
    keys = list(groups)
    for i, key in enumerate(keys):
        futures += ticket.submit(key, tiles[key], [(light, span)] * len(tiles[key]), last=i == len(keys) - 1)
        order += groups[key]
    outputs = await ticket.wait(futures)
    if len(windows) == 1:
        return crop(outputs[0][None], order[0][1])
    merger = TileMerger((1, channels, h, w), geo.tile_overlap)
    for (win, at), out in zip(order, outputs, strict=True):
        merger.add(win, crop(out[None], at))
    return merger.result()


async def enhance(
    ticket: Ticket, s: torch.Tensor, span: float, light: LightLevel, mode: str, geo: Geometry, metrics: Metrics
) -> tuple[torch.Tensor, LightLevel]:
    """The enhanced 1×3×H×W image and the (resolved) light level used."""
    light = await resolve_light(ticket, s, span, light, mode)
    out = await run_tiled(ticket, s, span, "enhance", mode, light, geo, channels=3)
    _count(metrics, "enhance", s)
    return out, light


async def decompose(
    ticket: Ticket,
    s: torch.Tensor,
    span: float,
    light: LightLevel | None,
    mode: str,
    geo: Geometry,
    metrics: Metrics,
) -> tuple[dict[str, torch.Tensor], LightLevel | None]:
    """R (3 channels), L and, when a light level is given (fixed or "auto"), L_adj (1 channel each)."""
    if light is not None:
        light = await resolve_light(ticket, s, span, light, mode)
    out = await run_tiled(ticket, s, span, "decompose", mode, light, geo, channels=5 if light is not None else 4)
    parts = {"R": out[:, :3], "L": out[:, 3:4]}
    if light is not None:
        parts["L_adj"] = out[:, 4:5]
    _count(metrics, "decompose", s)
    return parts, light
