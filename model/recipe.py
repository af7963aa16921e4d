"""The enhancement recipe: the one path from a raw image to KinD's output, used by every front end.

``KinD.enhance``, the ``kind`` command, the evaluator and the service worker all run these functions:

1. normalise the whole image (:func:`model.normalise.normalise`): S and its span;
2. resolve the light level (:class:`model.light.LightLevel`): a fixed α as given, "auto" chosen on a
   preview of the whole image (:func:`choose_alpha`), so tiles share one α;
3. run the networks on the image, or on overlapping tiles of it when it is larger than the tile size
   (:func:`compute_parts`, :func:`decompose_batch`, :func:`model.tiling.tiled`): the α-independent
   :class:`~model.parts.Parts`;
4. adjust the illumination to α and compose the output from the parts (:func:`relight`), in tiles with
   context; a new α repeats only this step.

:func:`enhance` is steps 1–4; a caller that keeps the parts (the service's cache, ``kind enhance --alpha 2,4,8``)
runs :func:`relight` again for each further α. :func:`enhance_batch` is steps 3–4 on one canvas at once, the
graph :mod:`model.onnx_export` exports.

The service splits the same steps across its batcher (α on a preview, then tiles of many requests in one
batch) but computes each step with the functions here. The bundle's settings for this recipe are
:class:`model.defaults.InferenceDefaults`; the functions take any :class:`model.networks.Networks`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from .auto_alpha import auto_alpha_from_parts, preview
from .compose import Mode, check_mode, compose
from .light import AUTO, LightLevel
from .multires import FAST_FACTOR, Quality, check_quality, lift, reduce, uses_reduction
from .networks import Networks
from .normalise import normalise
from .parts import (
    NETWORK_SLICE,
    Parts,
    adjust,
    adjust_windows,
    complete,
    compose_batch,
    composition_inputs,
    in_image,
    join,
    parts_batch,
    parts_canvas,
    region,
    relight_tile,
    relight_windows,
)
from .tiling import Progress, tiled

PRECISIONS = ("fp32", "fp16", "bf16")
# changes whenever the same bundle, image and parameters give another output (a change to the composition, the
# metering, the tiling), so that anything keyed by what determines an output — the service's ETags and stored
# results — stops matching what the previous recipe made
REVISION = "2026-12-07"


class Decomposed(NamedTuple):
    """Reflectance 1×3×H×W, illumination 1×1×H×W and, when a light level was given, the adjusted one."""

    reflectance: torch.Tensor
    illumination: torch.Tensor
    adjusted: torch.Tensor | None
    alpha: float | None


@contextlib.contextmanager
def inference_context(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """``inference_mode`` plus autocast for ``precision`` in :data:`PRECISIONS` (thread-local: enter per thread)."""
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    with torch.inference_mode():
        if precision == "fp32":
            yield
        elif precision in dtypes:
            with torch.autocast(device.type, dtype=dtypes[precision]):
                yield
        else:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def alpha_tensor(levels: Sequence[LightLevel], device: torch.device) -> torch.Tensor:
    """The fixed light levels of a batch as one N-vector on ``device`` (the only α → tensor conversion)."""
    values = [level.value for level in levels]
    if any(v is None for v in values):
        raise ValueError("resolve 'auto' light levels (resolve_light) before running the networks")
    return torch.tensor(values, dtype=torch.float32, device=device)


def choose_alpha(
    kind: Networks, image: torch.Tensor, mode: Mode | None = None, span: torch.Tensor | float = 1.0
) -> float:
    """Automatic α for one normalised 1×3×H×W image, from a preview (rule in :mod:`model.auto_alpha`).

    Always in float32, outside any autocast: the preview costs little, and under bf16 the metered means moved
    enough to change α on some photos (the output then differs by far more than bf16's own rounding).
    """
    defaults = kind.defaults
    mode = mode or defaults.mode
    with torch.autocast(image.device.type, enabled=False):
        small = preview(image.float())
        r, l = kind.decompose(small)
        parts = {"S": small, "R": r, "L": l, "R_hat": kind.restore(r, l)}
        return auto_alpha_from_parts(parts, kind.adjust, defaults.exposure_target, mode, span, defaults.max_clipped)


def resolve_light(kind: Networks, image: torch.Tensor, light: LightLevel, mode: Mode, span: float) -> LightLevel:
    """``light`` when fixed; for "auto", the level :func:`choose_alpha` picks for this normalised image."""
    return LightLevel(choose_alpha(kind, image, mode, span)) if light.auto else light


def enhance_batch(
    kind: Networks, image: torch.Tensor, alpha: torch.Tensor | float, mode: Mode, span: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """Enhanced N×3×H×W output of a normalised batch: the networks, then :func:`model.compose.compose`.

    ``alpha``: a float or one value per image; ``span``: the raw images' ranges (N×1×1×1 or a float).
    """
    reflectance, illumination = kind.decompose(image)
    restored = kind.restore(reflectance, illumination)
    adjusted = kind.adjust(illumination, alpha)
    return compose(image, reflectance, illumination, restored, adjusted, mode, span, alpha)


def decompose_batch(kind: Networks, image: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """R, L and (when ``alpha`` is given, one value per image) L adjusted, concatenated: N×(4 or 5)×H×W."""
    r, l = kind.decompose(image)
    parts = [r, l] if alpha is None else [r, l, kind.adjust(l, alpha)]
    return torch.cat(parts, dim=1)


def compute_parts(
    kind: Networks,
    image: torch.Tensor,
    *,
    tile_size: int | None = None,
    precision: str = "fp32",
    tiles_per_batch: int = 1,
    progress: Progress | None = None,
    dtype: torch.dtype = torch.float32,
    quality: Quality = "full",
) -> Parts:
    """The α-independent :class:`~model.parts.Parts` of one raw 1×3×H×W image in [0, 1]: the big networks' work.

    ``dtype``: float32 keeps them exact (what :func:`enhance` uses); :data:`~model.parts.PARTS_DTYPE` halves
    their memory, for parts kept across light levels (the service's cache, ``kind enhance --alpha 2,4,8``).
    ``quality="fast"``: the networks at half resolution on large images (:mod:`model.multires`).

    Normalisation comes from the whole image; images larger than ``tile_size`` (default: the bundle's) run in
    overlapping tiles, blended into the parts, so the networks' memory is bounded by the tile size.
    """
    tile, overlap = tile_size or kind.defaults.tile_size, kind.defaults.tile_overlap
    device = kind.device
    with inference_context(device, precision):
        s, captured = normalise(image.float())
        lo, small = float(image.amin()), preview(s)

        def networks(batch: torch.Tensor) -> torch.Tensor:
            return parts_batch(kind, batch.to(device, memory_format=torch.channels_last)).float().cpu()

        # the tiles (or the fast path's lifted maps) go straight into the parts, in their dtype: no full-image
        # float32 canvas
        maps = parts_canvas(s, dtype)
        if uses_reduction(check_quality(quality), *s.shape[-2:]):
            low = reduce(s)
            lift(s, low, tiled(networks, low, tile, overlap, tiles_per_batch, progress), out=maps[:, NETWORK_SLICE])
            return complete(maps, float(captured), lo, small, scale=FAST_FACTOR)
        tiled(networks, s, tile, overlap, tiles_per_batch, progress, out=maps[:, NETWORK_SLICE])
        del s
        return complete(maps, float(captured), lo, small)  # in inference mode, as the maps were made


def relight(
    kind: Networks,
    parts: Parts,
    light: LightLevel = AUTO,
    mode: Mode | None = None,
    *,
    tile_size: int | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, float]:
    """The enhanced image (1×3×H×W on the CPU) from an image's parts at one light level, and the α used.

    Only the adjustment net and the composition run, on tiles with context (:func:`model.parts.relight_tile` of
    ``tile_size``) so memory is bounded by the tile size: the net once per pixel into a whole-image L̂
    (:func:`model.parts.adjust_windows`), then the composition on regions of it
    (:func:`model.parts.relight_windows`); "auto" is chosen on the parts' preview, as :func:`enhance` chooses it.
    """
    mode = check_mode(mode or kind.defaults.mode)
    tile = relight_tile(tile_size or kind.defaults.tile_size)
    device = kind.device
    height, width = parts.height, parts.width
    with inference_context(device, precision):
        level = resolve_light(kind, parts.preview.to(device), light, mode, parts.span)
        alpha = alpha_tensor([level], device)
        adjusted = torch.empty(1, 1, height, width)
        for where, core in adjust_windows(height, width, tile, parts.scale):
            l = region(parts.illumination, where).to(device=device, dtype=torch.float32)
            region(adjusted, in_image(where, core)).copy_(region(adjust(kind, l, alpha, parts.scale), core))
        out = torch.empty(1, 3, height, width)
        for where, core in relight_windows(height, width, tile):
            # planes (join's NCHW), not channels-last: the composition's elementwise maths and per-plane blurs run
            # faster on them
            x = join([composition_inputs(region(parts.maps, where), region(adjusted, where))]).to(device)
            y = compose_batch(x, alpha, mode, parts.span)
            region(out, in_image(where, core)).copy_(region(y, core))
    assert level.value is not None
    return out, level.value


def enhance(
    kind: Networks,
    image: torch.Tensor,
    light: LightLevel = AUTO,
    mode: Mode | None = None,
    *,
    tile_size: int | None = None,
    precision: str = "fp32",
    tiles_per_batch: int = 1,
    progress: Progress | None = None,
    quality: Quality = "full",
) -> tuple[torch.Tensor, float]:
    """Enhance one raw 1×3×H×W image in [0, 1]; returns (output on the CPU, α used).

    :func:`compute_parts`, then :func:`relight`: normalisation and α come from the whole image, and images
    larger than ``tile_size`` (default: the bundle's) run in tiles so memory is bounded by the tile size.
    ``quality="fast"``: the networks at half resolution on large images (:mod:`model.multires`).
    """
    mode = check_mode(mode or kind.defaults.mode)
    parts = compute_parts(
        kind,
        image,
        tile_size=tile_size,
        precision=precision,
        tiles_per_batch=tiles_per_batch,
        progress=progress,
        quality=quality,
    )
    return relight(kind, parts, light, mode, tile_size=tile_size, precision=precision)


def decompose(
    kind: Networks,
    image: torch.Tensor,
    light: LightLevel | None = None,
    mode: Mode | None = None,
    *,
    tile_size: int | None = None,
    precision: str = "fp32",
    progress: Progress | None = None,
) -> Decomposed:
    """R, L and (when ``light`` is given; "auto" as enhancing would choose it) L adjusted of a raw image, tiled."""
    mode = check_mode(mode or kind.defaults.mode)
    tile, overlap = tile_size or kind.defaults.tile_size, kind.defaults.tile_overlap
    device = kind.device
    with inference_context(device, precision):
        s, captured = normalise(image.float())
        level = None if light is None else resolve_light(kind, s.to(device), light, mode, float(captured))
        alpha = None if level is None else alpha_tensor([level], device)

        def run(batch: torch.Tensor) -> torch.Tensor:
            batch = batch.to(device, memory_format=torch.channels_last)
            return decompose_batch(kind, batch, alpha).float().cpu()

        maps = tiled(run, s, tile, overlap, progress=progress)
    adjusted = maps[:, 4:5] if level is not None else None
    return Decomposed(maps[:, :3], maps[:, 3:4], adjusted, None if level is None else level.value)
