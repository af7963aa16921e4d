"""Request-level work shared by the routes: source bytes → decoded tensor → batched model work → images.

Blocking steps (decoding, normalisation, blending, encoding) run in the thread pool so the event loop
keeps answering probes and admissions while large images are handled.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import torch
from fastapi import Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from model import pipeline
from model.image import from_tensor, to_tensor

from . import imaging, jobs
from .batcher import Ticket
from .config import Settings
from .deps import read_upload
from .errors import Problem
from .metrics import Metrics
from .store import Store

COMPONENTS = ("R", "L", "L_adj")


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


def _prepare(data: bytes, settings: Settings) -> tuple[torch.Tensor, float]:
    s, span = pipeline.normalise(to_tensor(imaging.decode(data, settings.max_pixels, scan=settings.scan_limits)))
    return s, float(span)


async def normalised(ticket: Ticket, data: bytes, settings: Settings) -> tuple[torch.Tensor, float]:
    """Header check, pixel reservation, then full decode and the min-max stretch: (1×3×H×W, raw span)."""
    header = await run_in_threadpool(imaging.probe, data, settings.max_pixels, scan=settings.scan_limits)
    ticket.reserve(header.width * header.height)
    return await run_in_threadpool(_prepare, data, settings)


def _count(metrics: Metrics, op: str, s: torch.Tensor) -> None:
    metrics.images.labels(op).inc()
    metrics.megapixels.labels(op).inc(s.shape[-2] * s.shape[-1] / 1e6)


async def enhance(
    ticket: Ticket,
    s: torch.Tensor,
    span: float,
    alpha: float | None,
    mode: str,
    geo: jobs.Geometry,
    metrics: Metrics,
) -> tuple[torch.Tensor, float]:
    if alpha is None:
        alpha = await jobs.choose_alpha(ticket, s, span, mode)
    out = await jobs.run_tiled(ticket, s, span, "enhance", mode, alpha, geo, channels=3)
    _count(metrics, "enhance", s)
    return out, alpha


async def decompose(
    ticket: Ticket,
    s: torch.Tensor,
    span: float,
    alpha: float | None,
    auto: bool,
    mode: str,
    geo: jobs.Geometry,
    metrics: Metrics,
) -> tuple[dict[str, torch.Tensor], float | None]:
    """R (3 channels), L and, when α is given or automatic, L_adj (1 channel each)."""
    if auto:
        alpha = await jobs.choose_alpha(ticket, s, span, mode)
    channels = 5 if alpha is not None else 4
    out = await jobs.run_tiled(ticket, s, span, "decompose", mode, alpha, geo, channels=channels)
    parts = {"R": out[:, :3], "L": out[:, 3:4]}
    if alpha is not None:
        parts["L_adj"] = out[:, 4:5]
    _count(metrics, "decompose", s)
    return parts, alpha


def to_image(t: torch.Tensor) -> Image.Image:
    if t.shape[1] == 3:
        return from_tensor(t)
    arr = t[0, 0].clamp(0, 1).mul(255).add_(0.5).to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "L")


def encode_tensor(t: torch.Tensor, fmt: str) -> bytes:
    return imaging.encode(to_image(t), fmt)


def zip_components(pngs: dict[str, bytes], manifest: dict) -> bytes:
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
