"""What the image routes share: query parameters parsed once into the values the work uses, the source image,
and the OpenAPI fragments (problem responses, the image request body).

``alpha`` becomes a :class:`model.LightLevel` (a bad value raises :class:`model.AlphaError`, answered 422 by
:mod:`service.errors`); ``mode`` defaults to the served bundle's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel, Field

from kind_serve.model import ALPHA_MAX, ALPHA_MIN, LightLevel, Mode
from kind_serve.model.multires import FAST_MIN_PIXELS, Quality

from .. import payloads
from ..batcher import Ticket
from ..deps import EngineDep, admitted, drop_on_disconnect
from ..imaging import DECODERS
from ..store import SignedStore

# a preview below 64 px shows nothing of the photo; above 4096 px it costs what the full image would
PREVIEW_MIN = 64
PREVIEW_MAX = 4096
IMAGE_ID_PATTERN = r"^[0-9a-f]{64}$"
RANGE = f"'auto' or a number in [{ALPHA_MIN:g}, {ALPHA_MAX:g}]"

AlphaText = Annotated[
    str,
    Query(
        description=f"light level: {RANGE}; > 1 brightens, 'auto' chooses it per image",
        examples=["auto", "3.5"],
        openapi_examples={
            "auto": {"summary": "chosen per image", "value": "auto"},
            "fixed": {"summary": "brighten 3.5×", "value": "3.5"},
        },
        max_length=32,
    ),
]
OptionalAlphaText = Annotated[
    str | None, Query(description=f"also return L adjusted to this light level ({RANGE})", max_length=32)
]
ModeText = Annotated[
    Mode | None,
    Query(description="'photo' keeps bright regions natural; 'paper' is the authors' R̂·L̂; default: the bundle's"),
]
ImageIdQuery = Annotated[
    str | None, Query(description="id of a stored image (POST /images) instead of an upload", pattern=IMAGE_ID_PATTERN)
]
ImageIdPath = Annotated[str, Path(pattern=IMAGE_ID_PATTERN, description="id of a stored image: SHA-256 of its bytes")]
PreviewQuery = Annotated[
    int | None,
    Query(
        ge=PREVIEW_MIN,
        le=PREVIEW_MAX,
        description=(
            f"answer a preview: the image downscaled (never enlarged) so that its longest side is at most this "
            f"many pixels ({PREVIEW_MIN}..{PREVIEW_MAX}), then enhanced; a stored image's preview parts are kept "
            "for re-lighting like the full image's"
        ),
        examples=[1024],
    ),
]
QualityQuery = Annotated[
    Quality,
    Query(
        description=(
            f"'fast': on images above {FAST_MIN_PIXELS / 1e6:g} MP the networks run at half resolution, 2–3× "
            "faster with softer fine texture; 'full': at full resolution"
        ),
    ),
]


def light_level(alpha: AlphaText = "auto") -> LightLevel:
    return LightLevel.parse(alpha)


def optional_light_level(alpha: OptionalAlphaText = None) -> LightLevel | None:
    return None if alpha is None else LightLevel.parse(alpha)


def output_mode(engine: EngineDep, mode: ModeText = None) -> Mode:
    return mode or engine.served.defaults.mode


LightDep = Annotated[LightLevel, Depends(light_level)]
OptionalLightDep = Annotated[LightLevel | None, Depends(optional_light_level)]
ModeDep = Annotated[Mode, Depends(output_mode)]


@contextlib.asynccontextmanager
async def source(request: Request, image_id: str | None, store: SignedStore) -> AsyncIterator[tuple[Ticket, bytes]]:
    """An admitted ticket and the image (stored, or the upload); its queued work is dropped if the client leaves."""
    async with admitted(request) as ticket:
        data = await payloads.source_bytes(request, image_id, store, request.app.state.settings)
        async with drop_on_disconnect(request, ticket):
            yield ticket, data


class ProblemDetail(BaseModel):
    """RFC 9457 problem details, sent as ``application/problem+json``."""

    type: str = Field(examples=["https://kind-serve.invalid/problems/queue-full"])
    title: str = Field(examples=["Service Unavailable"])
    status: int = Field(examples=[503])
    detail: str = Field(examples=["server busy: 16 requests are already in progress; retry later"])
    instance: str = Field(examples=["/enhance"])
    request_id: str | None = Field(None, examples=["5f0c1e0f3c9b4a4e9d1f6c2b8a7e4d3c"])
    errors: list[dict[str, Any]] | None = Field(None, description="validation errors (422 only)")


_DESCRIPTIONS = {
    401: "missing or wrong bearer token (only when auth is on)",
    404: "no such stored image or job (never created, or expired)",
    406: "none of the Accept header's types can be produced",
    408: "the body was not received within the upload deadline or above the minimum rate",
    409: "the job's result while it is queued or running, or after it was cancelled",
    412: "If-None-Match: * on POST (a precondition that cannot hold)",
    413: "upload larger than the byte limit, or image beyond the megapixel limit",
    415: "not an image in a supported format",
    422: "invalid parameter, empty, truncated or corrupt image",
    429: "this client already holds its share of the admission slots, upload budget or image store",
    500: "inference failed",
    503: "busy (queue full), shutting down, out of memory or store unavailable; see Retry-After",
    504: "the request's deadline passed",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for problem+json errors."""
    content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}}
    return {code: {"description": _DESCRIPTIONS[code], "content": content} for code in codes}


WORK_ERRORS = (401, 408, 413, 415, 422, 429, 500, 503, 504)

_BINARY = {"type": "string", "format": "binary"}
_FORM = {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]}
_RAW_TYPES = ("image/png", "image/jpeg", "image/webp", "application/octet-stream")

IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": (
            f"The image ({', '.join(DECODERS)}) as the raw body, or as the field `file` of a multipart form. "
            "Omit it when `image_id` names a stored image."
        ),
        "content": {"multipart/form-data": {"schema": _FORM}, **{t: {"schema": _BINARY} for t in _RAW_TYPES}},
    }
}

REQUIRED_IMAGE_BODY: dict[str, Any] = {"requestBody": {**IMAGE_BODY["requestBody"], "required": True}}
