"""Request payloads in and out: where an image comes from, its id, decoding to a normalised tensor, encoding.

The source is the upload or a stored image (``POST /images``); its content id is its SHA-256. Decoding
checks the header against the pixel limit and reserves the pixels with the request's ticket before the
full decode; a stored image whose parts are cached (:mod:`service.partcache`) is not decoded again.
Blocking steps (decoding, normalisation, encoding, zipping) run in the thread pool so the event loop keeps
answering probes and admissions while large images are handled.
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

from model.image import Metadata, from_tensor, to_tensor
from model.normalise import normalise
from model.parts import Parts

from . import imaging, inference
from .admission import blocking
from .batcher import Ticket
from .config import Settings
from .deps import read_upload
from .errors import Problem
from .inference import ServedModel
from .metrics import Metrics
from .partcache import PartsCache, parts_key
from .store import Store


def image_key(image_id: str) -> str:
    return f"img:{image_id}"


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def source_bytes(request: Request, image_id: str | None, store: Store, settings: Settings) -> bytes:
    """The stored image ``image_id`` or, without it, the uploaded one."""
    if image_id is None:
        return await read_upload(request, settings.max_upload_bytes)
    data = await store.get(image_key(image_id))
    if data is None:
        raise Problem(
            404, "Not Found", f"no stored image {image_id}: upload it with POST /images first", kind="unknown-image"
        )
    return data


class Normalised(NamedTuple):
    """A decoded image after the min-max stretch: S (1×3×H×W), the raw range ``span`` and minimum ``lo``."""

    s: torch.Tensor
    span: float
    lo: float


def _prepare(data: bytes, settings: Settings) -> Normalised:
    x = to_tensor(imaging.decode(data, settings.max_pixels, scan=settings.scan_limits))
    s, span = normalise(x)
    return Normalised(s, float(span), float(x.amin()))


async def normalised(ticket: Ticket, data: bytes, settings: Settings) -> Normalised:
    """Structure and header checks, pixel reservation, then full decode and the min-max stretch."""
    header = await blocking(ticket, lambda: imaging.probe(data, settings.max_pixels, scan=settings.scan_limits))
    ticket.reserve(header.width * header.height)
    return await blocking(ticket, _prepare, data, settings)


async def parts_of(
    ticket: Ticket,
    data: bytes,
    image_id: str | None,
    settings: Settings,
    served: ServedModel,
    cache: PartsCache,
    metrics: Metrics,
) -> Parts:
    """The α-independent parts of the image ``data``: from the cache for a stored image seen before (its pixels
    reserved as a decode would), else decoded and computed, and kept when the image is a stored one."""
    key = None if image_id is None else parts_key(image_id, served)
    parts = None if key is None else cache.get(key)
    if parts is not None:
        ticket.reserve(parts.height * parts.width)
        return parts
    s, span, lo = await normalised(ticket, data, settings)
    parts = await inference.compute_parts(ticket, s, span, lo, served.geometry, metrics)
    if key is not None:
        cache.put(key, parts)
    return parts


def to_image(t: torch.Tensor) -> Image.Image:
    if t.shape[1] == 3:
        return from_tensor(t)
    arr = t[0, 0].clamp(0, 1).mul(255).add_(0.5).to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "L")


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
    """A zip entry extracted as a regular file with mode 0644 (``writestr`` with a name gives 0600).

    The fixed timestamp makes equal inputs give byte-identical zips (synchronous answer, job result, cache).
    """
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o100644 << 16
    info.compress_type = compress_type
    return info
