"""The image store: POST /images stores an upload under its content hash, GET /images/{id} returns it.

Storing is admitted work (it decodes the upload) charged to the client's share of the store; reading returns
the stored bytes with a content type from their magic bytes, without parsing them again.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .. import imaging, payloads
from ..admission import Admission
from ..deps import SettingsDep, StoreDep, admitted, drop_on_disconnect, read_upload, require_token
from ..problems import Problem
from .params import IMAGE_ID_PATTERN, REQUIRED_IMAGE_BODY, ImageIdPath, problems

router = APIRouter(tags=["images"], dependencies=[Depends(require_token)])

_ID = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
_LINKS: dict[str, Any] = {
    "image": f"/images/{_ID}",
    "enhance": f"/enhance?image_id={_ID}",
    "decompose": f"/decompose?image_id={_ID}",
}


class ImageLinks(BaseModel):
    image: str = Field(description="GET: the stored image bytes")
    enhance: str = Field(description="POST: enhance the stored image")
    decompose: str = Field(description="GET: decompose the stored image")


class StoredImage(BaseModel):
    """An image kept in the store; its id is the SHA-256 of its bytes."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": _ID, "width": 640, "height": 480, "format": "jpeg", "bytes": 83125, "links": _LINKS}]
        }
    )

    id: str = Field(pattern=IMAGE_ID_PATTERN, description="SHA-256 of the stored bytes, lower-case hex")
    width: int = Field(ge=1, description="width as stored (before EXIF orientation)")
    height: int = Field(ge=1, description="height as stored (before EXIF orientation)")
    format: str = Field(description="decoder that recognised the data, e.g. png, jpeg")
    bytes: int = Field(ge=1, description="size of the stored data")
    links: ImageLinks


@router.post(
    "/images",
    status_code=201,
    response_model=StoredImage,
    summary="Store an image",
    description="Decodes the image in full (format, size, pixels) and stores it; the id is its SHA-256. "
    "Storing the same bytes again returns the same id.",
    openapi_extra=REQUIRED_IMAGE_BODY,
    responses=problems(401, 408, 413, 415, 422, 429, 503),
)
async def put_image(request: Request, response: Response, settings: SettingsDep, store: StoreDep) -> StoredImage:
    data = await read_upload(request, settings.max_upload_bytes)
    admission: Admission = request.app.state.admission
    async with admitted(request, light=True) as ticket:
        # decoded in full (in a capped process) before it is stored: a valid header over corrupt pixels is
        # refused now, not served later
        async with drop_on_disconnect(request, ticket):
            decoded = await admission.decoders.decode(ticket, data, pixels=False)
        admission.reserve_pixels(ticket.client, ticket, decoded.pixels)
        image_id = await run_in_threadpool(payloads.content_id, data)
        await store.put(payloads.image_key(image_id), data)  # charged to this client (429 past its share)
    response.headers["Location"] = location = f"/images/{image_id}"
    query, h = f"?image_id={image_id}", decoded.header
    links = ImageLinks(image=location, enhance="/enhance" + query, decompose="/decompose" + query)
    return StoredImage(id=image_id, width=h.width, height=h.height, format=h.format, bytes=len(data), links=links)


@router.get(
    "/images/{image_id}",
    summary="Fetch a stored image",
    response_class=Response,
    responses={200: {"description": "the stored bytes", "content": {"image/*": {}}}, **problems(401, 404, 422, 503)},
)
async def get_image(image_id: ImageIdPath, store: StoreDep) -> Response:
    data = await store.get(payloads.image_key(image_id))
    if data is None:
        raise Problem(404, "Not Found", f"no stored image {image_id} (never stored, or expired)", kind="unknown-image")
    fmt = imaging.sniff(data)  # validated when stored: the magic bytes name the format
    headers = {
        "ETag": f'"{image_id}"',
        "Cache-Control": "private, max-age=3600, immutable",
        # a download, never a page: the bytes are a client's upload
        "Content-Disposition": f'attachment; filename="{image_id[:12]}.{fmt or "bin"}"',
    }
    return Response(data, media_type=f"image/{fmt}" if fmt else "application/octet-stream", headers=headers)
