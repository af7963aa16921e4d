"""Request payloads in and out: where an image comes from, its id, decoding to a normalised tensor, encoding.

The decoded size (:mod:`service.decoding`), not the header's, is checked for its shape and charged to the
request's client; blocking steps run in the thread pool so the event loop keeps answering while large images
are handled.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any, NamedTuple

import numpy as np
import torch
from fastapi import Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from kind_serve.model.image import Metadata, from_tensor, quantise, to_tensor
from kind_serve.model.multires import Quality
from kind_serve.model.normalise import normalise
from kind_serve.model.parts import Parts
from kind_serve.model.tiling import canvas_multiple

from . import imaging, inference
from .batcher import Ticket
from .config import Settings
from .decoding import Decoded
from .deps import Engine, read_upload
from .partcache import parts_key
from .problems import Problem
from .store import SignedStore

# any shape is served up to this canvas; beyond it the canvas may cover at most this many times the image
_SMALL_CANVAS = 1_000_000
_MAX_CANVAS_RATIO = 4


def image_key(image_id: str) -> str:
    return f"img:{image_id}"


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def source_bytes(request: Request, image_id: str | None, store: SignedStore, settings: Settings) -> bytes:
    """The stored image ``image_id`` or, without it, the uploaded one."""
    if image_id is None:
        return await read_upload(request, settings.max_upload_bytes)
    data = await store.get(image_key(image_id))
    if data is None:
        detail = f"no stored image {image_id}: upload it with POST /images first"
        raise Problem(404, "Not Found", detail, kind="unknown-image")
    return data


class Normalised(NamedTuple):
    """A decoded image after the min-max stretch: S (1×3×H×W), the raw range ``span`` and minimum ``lo``."""

    s: torch.Tensor
    span: float
    lo: float


def _prepare(decoded: Decoded) -> Normalised:
    x = to_tensor(decoded.array())  # copies the pixels out of shared memory
    s, span = normalise(x)
    return Normalised(s, float(span), float(x.amin()))


def check_shape(width: int, height: int, bucket: int) -> None:
    """413 for a shape whose model work is out of proportion to its pixels: the networks run on canvases whose
    sides are multiples of 32 (:func:`model.tiling.canvas_multiple`), so a 1-pixel-high strip costs 32 times."""
    multiple = canvas_multiple(bucket)
    canvas = -(-width // multiple) * multiple * (-(-height // multiple) * multiple)
    if canvas > max(_MAX_CANVAS_RATIO * width * height, _SMALL_CANVAS):
        detail = (
            f"the image is {width}×{height}: on the model's {multiple}-pixel canvas it would cost "
            f"{canvas / 1e6:.1f} megapixels of work for its {width * height / 1e6:.2f} (more than "
            f"{_MAX_CANVAS_RATIO}×, and over {_SMALL_CANVAS / 1e6:g} megapixel); crop it or pad it to a less "
            "extreme aspect ratio"
        )
        raise Problem(413, "Image too large", detail, kind="too-large")


def charge(ticket: Ticket, pixels: int) -> None:
    """Charge ``pixels`` to the request's client, as a decode of that size would be (its share, then the budget)."""
    if ticket.admission is None:
        raise RuntimeError("the ticket was not admitted through service.admission")
    ticket.admission.reserve_pixels(ticket.client, ticket, pixels)


async def normalised(ticket: Ticket, data: bytes, settings: Settings) -> Normalised:
    """Decoded in a capped process, its decoded size checked and charged, then the min-max stretch."""
    admission = ticket.admission
    if admission is None:
        raise RuntimeError("the ticket was not admitted through service.admission")
    decoded = await admission.decoders.decode(ticket, data)
    try:
        check_shape(decoded.width, decoded.height, admission.limits.bucket_multiple)
        charge(ticket, decoded.pixels)
        return await run_in_threadpool(_prepare, decoded)
    finally:
        decoded.release()


def shrink(s: torch.Tensor, longest: int) -> torch.Tensor:
    """``s`` (1×3×H×W) downscaled, antialiased, to a longest side of at most ``longest``.

    Applied after the whole image's min–max stretch, so a preview is lit like the full image (stretching the
    downscaled image would narrow its range, averaging away the extremes)."""
    h, w = s.shape[-2:]
    if max(h, w) <= longest:
        return s
    scale = longest / max(h, w)
    size = (max(1, min(longest, round(h * scale))), max(1, min(longest, round(w * scale))))
    return torch.nn.functional.interpolate(s, size=size, mode="bilinear", antialias=True, align_corners=False)


async def parts_of(
    ticket: Ticket,
    data: bytes,
    image_id: str | None,
    engine: Engine,
    preview: int | None = None,
    quality: Quality = "full",
) -> Parts:
    """The α-independent parts of ``data`` (of its preview, longest side ``preview``): from the cache for a
    stored image seen before (its pixels charged as a decode would be), else computed, and cached if stored."""
    key = None if image_id is None else parts_key(image_id, engine.served, preview, quality)
    parts = None if key is None else engine.cache.get(key)
    if parts is not None:
        charge(ticket, parts.height * parts.width)
        return parts
    s, span, lo = await normalised(ticket, data, engine.settings)
    if preview is not None:
        s = await run_in_threadpool(shrink, s, preview)
    parts = await inference.compute_parts(ticket, s, span, lo, engine.served.geometry, engine.metrics, quality)
    if key is not None:
        engine.cache.put(key, parts)
    return parts


def to_image(t: torch.Tensor) -> Image.Image:
    """A PIL image of H×W×3 bytes (:func:`service.inference.relight`'s) or of a 1×C×H×W float image (C 3 or 1)."""
    if t.dtype == torch.uint8:
        return Image.fromarray(t.numpy(), "RGB")
    if t.shape[1] == 3:
        return from_tensor(t)
    return Image.fromarray(np.ascontiguousarray(quantise(t[0, :1])[..., 0].numpy()), "L")


def encode_tensor(t: torch.Tensor, fmt: str, meta: Metadata | None = None) -> bytes:
    return imaging.encode(to_image(t), fmt, meta)


def zip_components(pngs: dict[str, bytes], manifest: dict[str, Any]) -> bytes:
    """``R.png``, ``L.png`` [, ``L_adj.png``] and ``manifest.json`` in one zip (PNGs stored, not deflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in pngs.items():
            zf.writestr(_member(f"{name}.png", zipfile.ZIP_STORED), data)
        zf.writestr(_member("manifest.json", zipfile.ZIP_DEFLATED), json.dumps(manifest, indent=2))
    return buf.getvalue()


def _member(name: str, compress_type: int) -> zipfile.ZipInfo:
    """A zip entry extracted with mode 0644 (``writestr`` with a name gives 0600), its timestamp fixed so that
    equal inputs give byte-identical zips (synchronous answer, job result, cache)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o100644 << 16
    info.compress_type = compress_type
    return info
