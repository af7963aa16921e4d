"""POST /enhance: one image in, the enhanced image out (same size and orientation)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from model import parse_alpha

from .. import handling, imaging
from ..deps import SettingsDep, StoreDep, admitted, drop_on_disconnect, require_token
from ..schemas import IMAGE_ID_PATTERN
from .openapi import IMAGE_BODY, problems

router = APIRouter(tags=["enhance"], dependencies=[Depends(require_token)])

AlphaQuery = Annotated[
    str,
    Query(
        description="light level: 'auto' (chosen per image) or a number in [0.1, 20]; > 1 brightens",
        examples=["auto", "3.5"],
        openapi_examples={
            "auto": {"summary": "chosen per image", "value": "auto"},
            "fixed": {"summary": "brighten 3.5×", "value": "3.5"},
        },
        max_length=32,
    ),
]
ModeQuery = Annotated[
    Literal["photo", "paper"] | None,
    Query(description="'photo' keeps bright regions natural; 'paper' is the authors' R̂·L̂; default: bundle's"),
]
ImageIdQuery = Annotated[
    str | None, Query(description="id of a stored image (POST /images) instead of an upload", pattern=IMAGE_ID_PATTERN)
]


def _etag(image_id: str, alpha: float | None, mode: str, fmt: str, version: str) -> str:
    params = f"{image_id}|{'auto' if alpha is None else repr(alpha)}|{mode}|{fmt}|{version}"
    return '"' + hashlib.sha256(params.encode()).hexdigest()[:40] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.post(
    "/enhance",
    summary="Enhance a low-light image",
    description=(
        "Returns the enhanced image, same size and orientation as the input (EXIF orientation applied). "
        "The output format comes from `format=` or else the Accept header (PNG by default). "
        "`X-Alpha` reports the α used, `X-Model-Version` the checkpoint; `ETag` identifies input, parameters "
        "and model, and a matching `If-None-Match` answers 304 without recomputing."
    ),
    response_class=Response,
    openapi_extra=IMAGE_BODY,
    responses={
        200: {
            "description": "the enhanced image",
            "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
            "headers": {
                "X-Alpha": {"description": "α used", "schema": {"type": "string"}},
                "X-Model-Version": {"description": "checkpoint version", "schema": {"type": "string"}},
                "ETag": {"description": "input hash + parameters + model version", "schema": {"type": "string"}},
            },
        },
        304: {"description": "If-None-Match matched the ETag"},
        **problems(401, 404, 406, 413, 415, 422, 500, 503, 504),
    },
)
async def enhance(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    alpha: AlphaQuery = "auto",
    mode: ModeQuery = None,
    format: Annotated[
        Literal["png", "jpeg", "jpg", "webp"] | None, Query(description="output format; overrides Accept")
    ] = None,
    image_id: ImageIdQuery = None,
) -> Response:
    alpha_value = parse_alpha(alpha)
    fmt = imaging.negotiate(format, request.headers.get("accept"))
    state = request.app.state
    mode = mode or state.model_defaults.mode
    async with admitted(request) as ticket:
        data = await handling.source_bytes(request, image_id, store, settings)
        etag = _etag(image_id or handling.content_id(data), alpha_value, mode, fmt, state.model_version)
        headers = {"ETag": etag, "X-Model-Version": state.model_version, "Vary": "Accept"}
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        async with drop_on_disconnect(request, ticket):
            s, span = await handling.normalised(ticket, data, settings)
            del data
            out, used = await handling.enhance(ticket, s, span, alpha_value, mode, state.geometry, state.metrics)
        body = await run_in_threadpool(handling.encode_tensor, out, fmt)
    headers["X-Alpha"] = format_alpha(used)
    return Response(body, media_type=imaging.MEDIA_TYPES[fmt], headers=headers)


def format_alpha(alpha: float) -> str:
    return f"{alpha:.4g}"
