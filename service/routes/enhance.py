"""POST /enhance: one image in, the enhanced image out (same size and orientation)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from kind_serve.model import LightLevel, Mode
from kind_serve.model.multires import Quality, uses_reduction

from .. import imaging, inference, payloads
from ..batcher import Ticket
from ..deps import Engine, EngineDep, StoreDep, require_token
from ..jobs import prefers_async, submit_job
from ..problems import Problem
from .params import IMAGE_BODY, ImageIdQuery, LightDep, ModeDep, PreviewQuery, QualityQuery, problems, source

FormatQuery = Annotated[
    Literal["png", "jpeg", "jpg", "webp"] | None, Query(description="output format; overrides Accept")
]
router = APIRouter(tags=["enhance"], dependencies=[Depends(require_token)])

HEADERS = {
    "X-Alpha": "α used",
    "X-Exposure-Gain": "output mean luminance / input mean luminance",
    "X-Model-Version": "checkpoint version",
    "X-Quality": "the path that ran: fast (networks at half resolution) or full",
    "ETag": "input hash + parameters + model version",
}


@dataclass(frozen=True)
class Enhancement:
    """What an enhancement asks for, parsed once from the query (or a job's parameters)."""

    light: LightLevel
    mode: Mode
    fmt: str
    strip: bool = False
    preview: int | None = None  # longest side of a preview; None: the full image
    quality: Quality = "full"

    def work(self) -> dict[str, Any]:
        """As a job's parameters (JSON); :meth:`from_work` reads them back."""
        return dict(alpha=str(self.light), mode=self.mode, format=self.fmt, strip=self.strip, quality=self.quality)

    @classmethod
    def from_work(cls, work: dict[str, Any]) -> Enhancement:
        # a job queued by a replica that predates quality= asked for the full path
        quality = work.get("quality", "full")
        return cls(LightLevel.parse(work["alpha"]), work["mode"], work["format"], work["strip"], None, quality)

    def etag(self, content: str, revision: str) -> str:
        """The ETag of this enhancement of the image with content id ``content`` under ``revision``
        (:attr:`service.inference.ServedModel.revision`)."""
        params = f"{content}|{self.light}|{self.mode}|{self.fmt}|{revision}{'|strip' if self.strip else ''}"
        params += "" if self.preview is None else f"|preview={self.preview}"
        params += "" if self.quality == "full" else f"|quality={self.quality}"
        return '"' + hashlib.sha256(params.encode()).hexdigest()[:40] + '"'


def _if_none_match(request: Request) -> list[str]:
    """The entity tags of If-None-Match, weak ones compared as strong (RFC 9110, 13.1.2)."""
    return [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",") if t.strip()]


def _validators(etag: str, version: str) -> dict[str, str]:
    """The headers a 304 repeats from the 200 it stands for."""
    return {"ETag": etag, "X-Model-Version": version, "Vary": "Accept"}


@router.post(
    "/enhance",
    summary="Enhance a low-light image",
    description=(
        "Returns the enhanced image, same size and orientation as the input (EXIF orientation applied). "
        "The output format comes from `format=` or else the Accept header (PNG by default). "
        "The output carries the input's ICC profile and EXIF (orientation reset to 1) unless `strip_metadata=true`. "
        "`X-Alpha` reports the α used (it scales the illumination after the input's normalising stretch), "
        "`X-Exposure-Gain` how much lighter the output is than the input (ratio of mean luminances), "
        "`X-Model-Version` the checkpoint; `ETag` identifies input, parameters "
        "and model, and a matching `If-None-Match` answers 304 without recomputing. "
        "`preview=N` answers the image downscaled to at most N px on its longest side (a stored image's preview "
        "is re-lit from its own cached parts, as the full image is); a preview is always answered at once, "
        "`Prefer: respond-async` notwithstanding. `quality=fast` runs the networks at half resolution on images "
        "above 2 MP (2–3× faster, softer fine texture); `X-Quality` says which path ran."
    ),
    response_class=Response,
    openapi_extra=IMAGE_BODY,
    responses={
        200: {
            "description": "the enhanced image",
            "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
            "headers": {k: {"description": v, "schema": {"type": "string"}} for k, v in HEADERS.items()},
        },
        304: {"description": "If-None-Match matched the ETag"},
        **problems(401, 404, 406, 412, 413, 415, 422, 500, 503, 504),
    },
)
async def enhance(
    request: Request,
    engine: EngineDep,
    store: StoreDep,
    light: LightDep,
    mode: ModeDep,
    format: FormatQuery = None,
    image_id: ImageIdQuery = None,
    strip_metadata: Annotated[
        bool, Query(description="drop the input's EXIF (camera, date, GPS) from the output; the ICC profile stays")
    ] = False,
    preview: PreviewQuery = None,
    quality: QualityQuery = "full",
) -> Response:
    if "*" in _if_none_match(request):
        detail = "If-None-Match: * cannot hold for POST (RFC 9110, 13.1.2): send the ETag of an earlier answer"
        raise Problem(412, "Precondition Failed", detail, kind="precondition-failed")
    fmt = imaging.negotiate(format, request.headers.get("accept"))
    want = Enhancement(light, mode, fmt, strip_metadata, preview, quality)
    # a preview is small work by construction: the answer itself is the quick response a client wants
    if prefers_async(request) and preview is None:
        return await submit_job(request, "enhance", want.work(), image_id)
    async with source(request, image_id, store) as (ticket, data):
        etag = await etag_of(data, image_id, want, engine.served.revision)
        if etag in _if_none_match(request):
            return Response(status_code=304, headers=_validators(etag, engine.served.version))
        return await enhance_image(ticket, data, image_id, want, etag, engine)


async def etag_of(data: bytes, image_id: str | None, want: Enhancement, revision: str) -> str:
    """The ETag of an enhancement: the image's content id (hashed off the event loop), parameters, model and
    recipe."""
    content = image_id if image_id is not None else await run_in_threadpool(payloads.content_id, data)
    return want.etag(content, revision)


async def enhance_image(
    ticket: Ticket, data: bytes, image_id: str | None, want: Enhancement, etag: str, engine: Engine
) -> Response:
    """The answer to an enhancement of ``data`` (a stored image when ``image_id``), for the route and for jobs."""
    parts = await payloads.parts_of(ticket, data, image_id, engine, want.preview, want.quality)
    meta = await run_in_threadpool(imaging.metadata, data)
    del data
    geo, metrics = engine.served.geometry, engine.metrics
    pixels, used, gain = await inference.relight(ticket, parts, want.light, want.mode, geo, metrics)
    body = await run_in_threadpool(
        payloads.encode_tensor, pixels, want.fmt, meta.without_exif() if want.strip else meta
    )
    assert used.value is not None  # resolved: a fixed level
    headers = {
        **_validators(etag, engine.served.version),
        "X-Alpha": f"{used.value:.4g}",
        "X-Exposure-Gain": f"{gain:.3g}",
        "X-Quality": "fast" if uses_reduction(want.quality, parts.height, parts.width) else "full",
        "Content-Disposition": f'inline; filename="enhanced.{want.fmt}"',
    }
    return Response(body, media_type=imaging.MEDIA_TYPES[want.fmt], headers=headers)
