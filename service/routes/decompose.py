"""Retinex decomposition: reflectance R, illumination L and, with α, the adjusted illumination L_adj.

A stored image's components are computed once per α, mode and model and kept in the image store as a zip
(R and L from the parts an enhancement on this replica kept, when it has them); the routes answer links, one
PNG or the zip. ``POST /decompose`` answers an upload's zip directly.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from kind_serve.model import LightLevel, Mode

from .. import inference, payloads
from ..admission import StoreShareFull
from ..batcher import Ticket
from ..deps import Engine, EngineDep, StoreDep, admitted, require_token
from ..jobs import prefers_async, submit_job
from ..partcache import parts_key
from ..problems import Problem
from .params import (
    IMAGE_ID_PATTERN,
    RANGE,
    REQUIRED_IMAGE_BODY,
    WORK_ERRORS,
    ImageIdPath,
    ModeDep,
    OptionalLightDep,
    problems,
    source,
)

router = APIRouter(tags=["decompose"], dependencies=[Depends(require_token)])

ZIP = {"description": "zip archive: R.png, L.png, [L_adj.png], manifest.json", "content": {"application/zip": {}}}
DESCRIPTIONS = {"R": "reflectance, RGB", "L": "illumination, grey", "L_adj": "illumination adjusted to alpha, grey"}
RANGE_MD = RANGE.replace("'", "`")


class DecompositionLinks(BaseModel):
    """Where each component of a decomposition can be fetched (PNG images) and all of them as a zip."""

    image_id: str = Field(pattern=IMAGE_ID_PATTERN)
    alpha: float | None = Field(description="α of the adjusted illumination; null when none was asked for")
    mode: Mode
    model_version: str
    components: dict[str, str] = Field(description="component name (R, L, L_adj) → URL of its PNG")
    all: str = Field(description="URL of a zip archive holding every component PNG plus manifest.json")


@dataclass
class Decomposition:
    """One decomposition request: its light level (None: no L_adj), mode, and what computing it needs."""

    request: Request
    engine: EngineDep
    store: StoreDep
    light: OptionalLightDep
    mode: ModeDep

    @property
    def query(self) -> str:
        """The query string that asks for these components again (α in its canonical spelling)."""
        return f"?alpha={self.light}&mode={self.mode}" if self.light is not None else f"?mode={self.mode}"

    async def compute(self, image_id: str | None) -> tuple[bytes, str]:
        """Zip of the components of a stored image (``image_id``) or of the upload, and the image's id."""
        async with source(self.request, image_id, self.store) as (ticket, data):
            return await decompose_image(ticket, data, image_id, self.light, self.mode, self.engine)

    async def member(self, image_id: str, name: str | None) -> bytes:
        """File ``name`` (None: all) of the stored image's zip, kept in the store per image, α, mode and model."""
        key = f"dec:{image_id}:{self.mode}:{self.light}:{self.engine.served.revision}"
        blob = await self.store.get(key)
        if blob is None:
            blob, _ = await self.compute(image_id)
            # past the client's store share the result is answered uncached: caching it would evict others' entries
            with contextlib.suppress(StoreShareFull):
                await self.store.put(key, blob)
        async with admitted(self.request, light=True):  # reading the zip is admitted work, off the event loop
            return (
                blob if name is None else await run_in_threadpool(lambda: zipfile.ZipFile(io.BytesIO(blob)).read(name))
            )


DecompositionDep = Annotated[Decomposition, Depends()]


async def decompose_image(
    ticket: Ticket, data: bytes, image_id: str | None, light: LightLevel | None, mode: Mode, engine: Engine
) -> tuple[bytes, str]:
    """Zip of the components of ``data`` (a stored image when ``image_id``) and the image's id, for the routes
    and for jobs."""
    content = image_id if image_id is not None else await run_in_threadpool(payloads.content_id, data)
    served, metrics, geo = engine.served, engine.metrics, engine.served.geometry
    cached = engine.cache.get(parts_key(content, served))
    if cached is not None:  # R and L are among the parts an enhancement of this image kept
        payloads.charge(ticket, cached.height * cached.width)
        parts, used = await inference.decompose_parts(ticket, cached, light, mode, geo, metrics)
    else:
        s, span, _ = await payloads.normalised(ticket, data, engine.settings)
        del data
        parts, used = await inference.decompose(ticket, s, span, light, mode, geo, metrics)
    pngs = await run_in_threadpool(lambda: {k: payloads.encode_tensor(v, "png") for k, v in parts.items()})
    manifest = {
        "image_id": content,
        "alpha": None if used is None else used.value,
        "mode": mode,
        "model_version": served.version,
        "components": {k: {"file": f"{k}.png", "description": DESCRIPTIONS[k]} for k in pngs},
    }
    return await run_in_threadpool(payloads.zip_components, pngs, manifest), content


def zip_response(blob: bytes, image_id: str) -> Response:
    """The zip of an image's components as an attachment named after the image."""
    headers = {"Content-Disposition": f'attachment; filename="{image_id[:12]}-decomposition.zip"'}
    return Response(blob, media_type="application/zip", headers=headers)


@router.get(
    "/decompose",
    response_model=DecompositionLinks,
    summary="Decompose a stored image; links to each component",
    responses=problems(404, *WORK_ERRORS),
)
async def decompose_links(
    job: DecompositionDep,
    image_id: Annotated[str, Query(pattern=IMAGE_ID_PATTERN, description="id from POST /images")],
) -> DecompositionLinks:
    manifest = json.loads(await job.member(image_id, "manifest.json"))
    q = job.query
    return DecompositionLinks(
        image_id=image_id,
        alpha=manifest["alpha"],
        mode=job.mode,
        model_version=manifest["model_version"],
        components={k: f"/decompose/{image_id}/{k}.png{q}" for k in manifest["components"]},
        all=f"/decompose/{image_id}/all.zip{q}",
    )


@router.get(
    "/decompose/{image_id}/all.zip",
    summary="All components of a stored image as one zip",
    response_class=Response,
    responses={200: ZIP, **problems(404, *WORK_ERRORS)},
)
async def decompose_zip(job: DecompositionDep, image_id: ImageIdPath) -> Response:
    return zip_response(await job.member(image_id, None), image_id)


@router.get(
    "/decompose/{image_id}/{component}.png",
    summary="One component of a stored image as a PNG",
    description=(
        "`R` and `L` need no parameter; `L_adj` is the illumination adjusted to a light level, so it needs "
        f"`alpha` ({RANGE_MD}): without it the answer is 422."
    ),
    response_class=Response,
    responses={200: {"description": "the component", "content": {"image/png": {}}}, **problems(404, *WORK_ERRORS)},
)
async def decompose_component(
    job: DecompositionDep,
    image_id: ImageIdPath,
    component: Annotated[Literal["R", "L", "L_adj"], Path(description="R, L or L_adj (needs alpha)")],
) -> Response:
    if component == "L_adj" and job.light is None:
        detail = "L_adj is the illumination adjusted to a light level: pass alpha=" + RANGE.replace("'", "")
        raise Problem(422, "Missing alpha", detail, kind="invalid-alpha")
    headers = {"Content-Disposition": f'inline; filename="{image_id[:12]}-{component}.png"'}
    return Response(await job.member(image_id, f"{component}.png"), media_type="image/png", headers=headers)


@router.post(
    "/decompose",
    summary="Decompose an uploaded image; all components as one zip",
    response_class=Response,
    openapi_extra=REQUIRED_IMAGE_BODY,
    responses={200: ZIP, **problems(*WORK_ERRORS)},
)
async def decompose_upload(job: DecompositionDep) -> Response:
    if prefers_async(job.request):
        work = {"alpha": None if job.light is None else str(job.light), "mode": job.mode}
        return await submit_job(job.request, "decompose", work, None)
    return zip_response(*await job.compute(None))
