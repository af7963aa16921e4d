"""A request's model work as batcher items: :mod:`model.recipe`'s steps, split so that work of many requests
batches together.

"auto" is resolved by a worker on a preview (one α for every tile); tiles go to the networks on the library's
canvas (:func:`model.tiling.canvas_window`, which also buckets sizes) and blend into the image's
:class:`~model.parts.Parts`; the output is composed from those on regions with context, so a cached image's
next α runs only that step. Whatever the load, an input gives the library's output. Items carry
``(LightLevel, span)`` to the worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from kind_serve.model import InferenceDefaults, LightLevel, Mode, TilingError, recipe
from kind_serve.model.auto_alpha import preview
from kind_serve.model.cpu import release_freed_memory
from kind_serve.model.image import quantise
from kind_serve.model.multires import FAST_FACTOR, Quality, lift, reduce, uses_reduction
from kind_serve.model.parts import (
    NETWORK_CHANNELS,
    NETWORK_SLICE,
    Parts,
    adjust_windows,
    complete,
    composition_inputs,
    in_image,
    parts_canvas,
    region,
    relight_tile,
    relight_windows,
)
from kind_serve.model.tiling import (
    TileMerger,
    Window,
    canvas_multiple,
    canvas_window,
    check_tiling,
    crop,
    on_canvas,
    split_windows,
)

from .config import Limits, Settings
from .metrics import Metrics
from .tickets import BatchKey, ItemInput, Ticket

_P = TypeVar("_P")  # where an item's output goes


@dataclass(frozen=True)
class Geometry:
    """How a request's image is cut for the batcher: tile size and overlap (checked), size bucket."""

    tile_size: int
    tile_overlap: int
    bucket: int


def geometry(settings: Settings, defaults: InferenceDefaults, limits: Limits) -> Geometry:
    """The tiling in use: ``KIND_TILE_SIZE`` else the bundle's tile size, with the bundle's overlap (ValueError
    naming the setting to change when they fail :func:`model.check_tiling`)."""
    tile, overlap = settings.tile_size or defaults.tile_size, defaults.tile_overlap
    try:
        check_tiling(tile, overlap)
    except TilingError as exc:
        source = "KIND_TILE_SIZE" if settings.tile_size else "the bundle's tile_size"
        raise ValueError(
            f"{source} with the bundle's tile_overlap ({overlap}): {exc}. Set KIND_TILE_SIZE (--tile-size) to at "
            f"least {exc.min_tile}"
        ) from None
    return Geometry(tile_size=tile, tile_overlap=overlap, bucket=limits.bucket_multiple)


@dataclass(frozen=True)
class ServedModel:
    """What the routes need of the loaded model."""

    version: str
    defaults: InferenceDefaults
    geometry: Geometry
    precision: str = "fp32"

    @property
    def revision(self) -> str:
        """What an output depends on besides the request: the bundle's version and the recipe's revision
        (:data:`model.recipe.REVISION`). ETags and stored results key on it."""
        return f"{self.version}+{recipe.REVISION}"


def _count(metrics: Metrics, op: str, s: torch.Tensor) -> None:
    metrics.images.labels(op).inc()
    metrics.megapixels.labels(op).inc(s.shape[-2] * s.shape[-1] / 1e6)


async def resolve_light(ticket: Ticket, s: torch.Tensor, span: float, light: LightLevel, mode: Mode) -> LightLevel:
    """``light`` when fixed; for "auto", the level a worker chooses on a preview of the normalised image."""
    if not light.auto:
        return light
    small = preview(s)
    key = BatchKey("alpha", mode, small.shape[-2], small.shape[-1])
    (alpha,) = await ticket.wait(ticket.submit(key, [small], [(light, span)], last=False))
    return LightLevel(alpha)


def _submit(
    ticket: Ticket, items: Sequence[tuple[BatchKey, ItemInput, _P]], params: tuple[LightLevel | None, float]
) -> tuple[list[concurrent.futures.Future], list[_P]]:
    """Submit ``(key, input, placement)`` items grouped by key, so that equal keys batch together; their futures
    and placements in submission order."""
    groups: dict[BatchKey, list[tuple[ItemInput, _P]]] = {}
    for key, tensor, placement in items:
        groups.setdefault(key, []).append((tensor, placement))
    futures: list[concurrent.futures.Future] = []
    order: list[_P] = []
    for i, (key, group) in enumerate(groups.items()):
        futures += ticket.submit(key, [t for t, _ in group], [params] * len(group), last=i == len(groups) - 1)
        order += [placement for _, placement in group]
    return futures, order


async def run_tiled(
    ticket: Ticket,
    s: torch.Tensor,
    span: float,
    op: str,
    mode: Mode | None,
    light: LightLevel | None,
    geo: Geometry,
    channels: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``op`` on every tile of the normalised 1×3×H×W image ``s`` and blend the outputs (1×C×H×W), into
    ``out`` when given (any float dtype, as :func:`model.tiling.tiled`)."""
    h, w = s.shape[-2:]
    windows = split_windows(h, w, geo.tile_size, geo.tile_overlap)  # one window when it fits
    multiple = canvas_multiple(geo.bucket)
    # admission by estimated model time, from the canvases' sizes before any tile is built
    canvases = [canvas_window(win, h, w, multiple) for win in windows]
    ticket.plan(op, sum(c.height * c.width for c in canvases), len(windows), h * w)
    items = []
    for win in windows:
        tile, at = on_canvas(s, win, multiple)  # the library's canvas, so the output is the library's
        key = BatchKey(op, mode, tile.shape[-2], tile.shape[-1], adjust=op == "decompose" and light is not None)
        items.append((key, tile, (win, at)))  # a view of s, or a padded border tile: copied when batched
    futures, order = _submit(ticket, items, (light, span))
    if len(windows) == 1:
        (y,) = await ticket.wait(futures)
        return crop(y[None], order[0][1]) if out is None else out.copy_(crop(y[None], order[0][1]))
    merger = TileMerger(torch.empty(1, channels, h, w) if out is None else out, windows, geo.tile_overlap)

    # tiles are blended as they arrive (they are never all held at once), but in submission order: a
    # float16 canvas rounds each sum, so another order could give other bytes for the same request
    early: dict[int, torch.Tensor] = {}
    applied = 0

    def merge(i: int, y: torch.Tensor) -> None:
        nonlocal applied
        early[i] = y
        while applied in early:
            win, at = order[applied]
            merger.add(win, crop(early.pop(applied)[None], at))
            applied += 1

    await ticket.wait(futures, merge)
    return merger.canvas


async def compute_parts(
    ticket: Ticket,
    s: torch.Tensor,
    span: float,
    lo: float,
    geo: Geometry,
    metrics: Metrics,
    quality: Quality = "full",
) -> Parts:
    """The α-independent parts of the normalised image ``s`` (raw range ``span``, minimum ``lo``): the networks
    on its tiles (op ``enhance``), blended, in :data:`model.parts.PARTS_DTYPE`; on a large image at
    ``quality="fast"``, on the tiles of ``s`` halved, lifted back as the library does (:mod:`model.multires`)."""
    # the parts serve every mode: one batch key (mode None) for all of them; the tiles (or the fast path's lifted
    # maps) go straight into the cached float16 parts, with no full-image float32 canvas
    maps = await asyncio.to_thread(parts_canvas, s)
    if uses_reduction(quality, *s.shape[-2:]):
        low = await asyncio.to_thread(reduce, s)
        networks = await run_tiled(ticket, low, span, "enhance", None, None, geo, channels=NETWORK_CHANNELS)
        await asyncio.to_thread(lift, s, low, networks, maps[:, NETWORK_SLICE])
        return await asyncio.to_thread(lambda: complete(maps, span, lo, preview(s), scale=FAST_FACTOR))
    await run_tiled(ticket, s, span, "enhance", None, None, geo, NETWORK_CHANNELS, maps[:, NETWORK_SLICE])
    if max(s.shape[-2:]) > geo.tile_size:
        # a tiled image's network activations are freed but kept by the allocator for the next tile
        # (model.cpu): hand them back before the grey mask's and the re-lighting's working sets come on top
        await asyncio.to_thread(release_freed_memory)
    return await asyncio.to_thread(lambda: complete(maps, span, lo, preview(s)))


async def _on_windows(
    ticket: Ticket,
    pairs: list[tuple[Window, Window]],
    item: Callable[[Window], tuple[BatchKey, ItemInput]],
    params: tuple[LightLevel, float],
    image_pixels: int,
    put: Callable[[Window, torch.Tensor], None],
) -> None:
    """One item per (window, core) pair (``item(window)``: its key and input), each output's core handed to
    ``put(where in the image, C×h×w output)`` as it arrives."""
    items = [(*item(where), (where, core)) for where, core in pairs]  # views: copied only when batched
    ticket.plan(items[0][0].op, sum(where.height * where.width for where, _ in pairs), len(pairs), image_pixels)
    futures, order = _submit(ticket, items, params)

    def place(i: int, y: torch.Tensor) -> None:
        where, core = order[i]
        put(in_image(where, core), region(y, core))

    await ticket.wait(futures, place)


async def adjust_illumination(ticket: Ticket, parts: Parts, light: LightLevel, geo: Geometry) -> torch.Tensor:
    """The illumination of ``parts`` adjusted to the fixed ``light``: 1×1×H×W float32, the adjustment net run once
    per pixel (:func:`model.parts.adjust_windows`)."""
    adjusted = torch.empty(1, 1, parts.height, parts.width)

    def item(where: Window) -> tuple[BatchKey, ItemInput]:
        key = BatchKey("adjust", None, where.height, where.width, scale=parts.scale)  # L̂ serves every mode
        return key, region(parts.illumination, where)

    def put(at: Window, y: torch.Tensor) -> None:
        region(adjusted, at).copy_(y)

    pairs = adjust_windows(parts.height, parts.width, relight_tile(geo.tile_size), parts.scale)
    await _on_windows(ticket, pairs, item, (light, parts.span), parts.height * parts.width, put)
    return adjusted


async def relight(
    ticket: Ticket, parts: Parts, light: LightLevel, mode: Mode, geo: Geometry, metrics: Metrics
) -> tuple[torch.Tensor, LightLevel, float]:
    """The enhanced image from an image's parts as H×W×3 bytes, the light level used ("auto" resolved) and the
    exposure gain (:meth:`model.parts.Parts.exposure_gain`): L adjusted over the whole image, then the
    composition on regions of the parts and of it (:func:`model.recipe.relight`'s steps)."""
    light = await resolve_light(ticket, parts.preview, parts.span, light, mode)
    adjusted = await adjust_illumination(ticket, parts, light, geo)
    pixels = torch.empty(parts.height, parts.width, 3, dtype=torch.uint8)  # the float image is never whole
    sums = torch.zeros(3, dtype=torch.float64)

    def item(where: Window) -> tuple[BatchKey, ItemInput]:
        key = BatchKey("relight", mode, where.height, where.width)
        return key, composition_inputs(region(parts.maps, where), region(adjusted, where))

    def put(at: Window, y: torch.Tensor) -> None:
        sums.add_(y.sum(dim=(1, 2)).double())
        pixels[at.top : at.top + at.height, at.left : at.left + at.width] = quantise(y)

    pairs = relight_windows(parts.height, parts.width, relight_tile(geo.tile_size))
    await _on_windows(ticket, pairs, item, (light, parts.span), parts.height * parts.width, put)
    _count(metrics, "enhance", parts.maps)
    means = (sums / (parts.height * parts.width)).float().view(1, 3, 1, 1)
    return pixels, light, parts.exposure_gain(means)


async def decompose_parts(
    ticket: Ticket, parts: Parts, light: LightLevel | None, mode: Mode, geo: Geometry, metrics: Metrics
) -> tuple[dict[str, torch.Tensor], LightLevel | None]:
    """:func:`decompose` from an image's parts: R and L as they are, L_adj by the adjustment net alone."""
    components = {"R": parts.reflectance.float(), "L": parts.illumination.float()}
    if light is not None:
        light = await resolve_light(ticket, parts.preview, parts.span, light, mode)
        components["L_adj"] = await adjust_illumination(ticket, parts, light, geo)
    _count(metrics, "decompose", parts.maps)
    return components, light


async def decompose(
    ticket: Ticket,
    s: torch.Tensor,
    span: float,
    light: LightLevel | None,
    mode: Mode,
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
