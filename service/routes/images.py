"""The image store: POST /images stores an upload under its content hash, GET /images/{id} returns it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from .. import handling, imaging
from ..deps import SettingsDep, StoreDep, read_upload, require_token
from ..errors import Problem
from ..schemas import IMAGE_ID_PATTERN, ImageLinks, StoredImage
from .openapi import REQUIRED_IMAGE_BODY, problems

router = APIRouter(tags=["images"], dependencies=[Depends(require_token)])

ImageIdPath = Annotated[str, Path(pattern=IMAGE_ID_PATTERN, description="SHA-256 of the image bytes (hex)")]


def _describe(image_id: str, header: imaging.Header, size: int) -> StoredImage:
    return StoredImage(
        id=image_id,
        width=header.width,
        height=header.height,
        format=header.format,
        bytes=size,
        links=ImageLinks(
            image=f"/images/{image_id}",
            enhance=f"/enhance?image_id={image_id}",
            decompose=f"/decompose?image_id={image_id}",
        ),
    )


@router.post(
    "/images",
    status_code=201,
    response_model=StoredImage,
    summary="Store an image",
    description="Validates the image (format and size from its header) and stores it; the id is its SHA-256. "
    "Storing the same bytes again returns the same id.",
    openapi_extra=REQUIRED_IMAGE_BODY,
    responses=problems(401, 413, 415, 422, 503),
)
async def put_image(request: Request, response: Response, settings: SettingsDep, store: StoreDep) -> StoredImage:
    data = await read_upload(request, settings.max_upload_bytes)
    header = await run_in_threadpool(imaging.probe, data, settings.max_pixels)
    image_id = handling.content_id(data)
    await store.put(handling.image_key(image_id), data)
    response.headers["Location"] = f"/images/{image_id}"
    return _describe(image_id, header, len(data))


@router.get(
    "/images/{image_id}",
    summary="Fetch a stored image",
    response_class=Response,
    responses={
        200: {"description": "the stored bytes", "content": {"image/*": {}}},
        **problems(401, 404, 422, 503),
    },
)
async def get_image(image_id: ImageIdPath, store: StoreDep) -> Response:
    data = await store.get(handling.image_key(image_id))
    if data is None:
        raise Problem(404, "Not Found", f"no stored image {image_id} (never stored, or expired)", kind="unknown-image")
    header = imaging.probe(data, max_pixels=1 << 62)  # header only: already validated when stored
    media = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
    return Response(
        data,
        media_type=media.get(header.format, f"image/{header.format}"),
        headers={"ETag": f'"{image_id}"', "Cache-Control": "private, max-age=3600, immutable"},
    )
