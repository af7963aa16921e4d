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
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from kind_serve.model import LightLevel, Mode

from .. import inference, payloads
from ..admission import StoreShareFull
from ..batcher import Ticket
from ..deps import Engine, EngineDep, StoreDep, admitted, drop_on_disconnect, require_token
from ..errors import Problem
from ..jobs import prefers_async, submit_job
from ..partcache import parts_key
from ..schemas import IMAGE_ID_PATTERN, DecompositionLinks
from .openapi import REQUIRED_IMAGE_BODY, WORK_ERRORS, problems
from .params import RANGE, ModeDep, OptionalLightDep

router = APIRouter(tags=["decompose"], dependencies=[Depends(require_token)])

ImageIdPath = Annotated[str, Path(pattern=IMAGE_ID_PATTERN, description="id of a stored image")]
ZIP_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "zip archive: R.png, L.png, [L_adj.png], manifest.json", "content": {"application/zip": {}}}
}
DESCRIPTIONS = {"R": "reflectance, RGB", "L": "illumination, grey", "L_adj": "illumination adjusted to alpha, grey"}
RANGE_MD = RANGE.replace("'", "`")  # `auto` or a number in [0.1, 20]


@dataclass
class DecomposeRequest:
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
        async with admitted(self.request) as ticket:
            data = await payloads.source_bytes(self.request, image_id, self.store, self.engine.settings)
            async with drop_on_disconnect(self.request, ticket):
                return await decompose_image(ticket, data, image_id, self.light, self.mode, self.engine)

    async def cached(self, image_id: str) -> bytes:
        """The zip for a stored image, from the store when this image, α, mode and model were asked for before."""
        alpha = None if self.light is None else str(self.light)
        key = f"dec:{image_id}:{self.mode}:{alpha}:{self.engine.served.version}"
        blob = await self.store.get(key)
        if blob is None:
            blob, _ = await self.compute(image_id)
            # past the client's store share the result is answered uncached: it is computed already, and
            # caching it would evict entries of other clients
            with contextlib.suppress(StoreShareFull):
                await self.store.put(key, blob)
        return blob

    async def member(self, image_id: str, name: str | None) -> bytes:
        """File ``name`` of the cached zip (the whole zip for None), read as admitted work off the event loop."""
        blob = await self.cached(image_id)
        async with admitted(self.request, light=True):
            return (
                blob if name is None else await run_in_threadpool(lambda: zipfile.ZipFile(io.BytesIO(blob)).read(name))
            )


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


DecomposeDep = Annotated[DecomposeRequest, Depends()]


@router.get(
    "/decompose",
    response_model=DecompositionLinks,
    summary="Decompose a stored image; links to each component",
    responses=problems(404, *WORK_ERRORS),
)
async def decompose_links(
    job: DecomposeDep,
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
    responses={**ZIP_RESPONSE, **problems(404, *WORK_ERRORS)},
)
async def decompose_zip(job: DecomposeDep, image_id: ImageIdPath) -> Response:
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
    job: DecomposeDep,
    image_id: ImageIdPath,
    component: Annotated[Literal["R", "L", "L_adj"], Path(description="R, L or L_adj (needs alpha)")],
) -> Response:
    if component == "L_adj" and job.light is None:
        detail = "L_adj is the illumination adjusted to a light level: pass alpha=" + RANGE.replace("'", "")
        raise Problem(422, "Missing alpha", detail, kind="invalid-alpha")
    return Response(
        await job.member(image_id, f"{component}.png"),
        media_type="image/png",
        headers={"Content-Disposition": f'inline; filename="{image_id[:12]}-{component}.png"'},
    )


@router.post(
    "/decompose",
    summary="Decompose an uploaded image; all components as one zip",
    response_class=Response,
    openapi_extra=REQUIRED_IMAGE_BODY,
    responses={**ZIP_RESPONSE, **problems(*WORK_ERRORS)},
)
async def decompose_upload(job: DecomposeDep) -> Response:
    if prefers_async(job.request):
        work = {"alpha": None if job.light is None else str(job.light), "mode": job.mode}
        return await submit_job(job.request, "decompose", work, None)
    blob, image_id = await job.compute(None)
    return zip_response(blob, image_id)
