"""Retinex decomposition: reflectance R, illumination L and, with α, the adjusted illumination L_adj.

``GET /decompose?image_id=`` computes the components of a stored image and answers JSON links;
each component is a PNG at ``/decompose/{id}/{component}.png`` and all of them come together as a zip
(``/decompose/{id}/all.zip``: ``R.png``, ``L.png``, ``L_adj.png`` when α was given, ``manifest.json``).
Results are cached in the image store. ``POST /decompose`` takes an upload and answers the zip directly.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from model import parse_alpha

from .. import handling
from ..config import Settings
from ..deps import SettingsDep, StoreDep, admitted, drop_on_disconnect, require_token
from ..errors import Problem
from ..schemas import IMAGE_ID_PATTERN, DecompositionLinks
from ..store import Store
from .openapi import REQUIRED_IMAGE_BODY, WORK_ERRORS, problems

router = APIRouter(tags=["decompose"], dependencies=[Depends(require_token)])

AlphaQuery = Annotated[
    str | None,
    Query(description="also return L adjusted to this light level ('auto' or a number in [0.1, 20])", max_length=32),
]
ModeQuery = Annotated[Literal["photo", "paper"] | None, Query(description="mode used by α = auto")]
ImageIdPath = Annotated[str, Path(pattern=IMAGE_ID_PATTERN, description="id of a stored image")]
ZIP_RESPONSE = {
    200: {"description": "zip archive: R.png, L.png, [L_adj.png], manifest.json", "content": {"application/zip": {}}}
}
DESCRIPTIONS = {
    "R": "reflectance, RGB",
    "L": "illumination, grey",
    "L_adj": "illumination adjusted to alpha, grey",
}


def _query(alpha: str | None, mode: str) -> str:
    return f"?alpha={alpha}&mode={mode}" if alpha is not None else f"?mode={mode}"


def _alpha_text(alpha: str | None) -> str | None:
    """Canonical spelling of the α parameter (so equal values share a cache entry); validates it."""
    value = parse_alpha(alpha) if alpha is not None else None
    if alpha is None:
        return None
    return "auto" if value is None else repr(value)


async def _compute(
    request: Request,
    image_id: str | None,
    alpha: str | None,
    mode: str,
    settings,
    store,  # noqa: ANN001
) -> tuple[bytes, str]:
    """Zip of the components of a stored image (``image_id``) or of the upload, and the image's id."""
    state = request.app.state
    async with admitted(request) as ticket:
        data = await handling.source_bytes(request, image_id, store, settings)
        image_id = image_id or handling.content_id(data)
        async with drop_on_disconnect(request, ticket):
            s, span = await handling.normalised(ticket, data, settings)
            del data
            value = parse_alpha(alpha) if alpha is not None else None
            parts, used = await handling.decompose(
                ticket, s, span, value, alpha == "auto", mode, state.geometry, state.metrics
            )
        pngs = await run_in_threadpool(lambda: {k: handling.encode_tensor(v, "png") for k, v in parts.items()})
    manifest = {
        "image_id": image_id,
        "alpha": used,
        "mode": mode,
        "model_version": state.model_version,
        "components": {k: {"file": f"{k}.png", "description": DESCRIPTIONS[k]} for k in pngs},
    }
    return await run_in_threadpool(handling.zip_components, pngs, manifest), image_id


async def _cached(
    request: Request, image_id: str, alpha: str | None, mode: str, settings: Settings, store: Store
) -> bytes:
    key = f"dec:{image_id}:{mode}:{alpha}:{request.app.state.model_version}"
    blob = await store.get(key)
    if blob is None:
        blob, _ = await _compute(request, image_id, alpha, mode, settings, store)
        await store.put(key, blob)
    return blob


@router.get(
    "/decompose",
    response_model=DecompositionLinks,
    summary="Decompose a stored image; links to each component",
    responses=problems(404, *WORK_ERRORS),
)
async def decompose_links(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    image_id: Annotated[str, Query(pattern=IMAGE_ID_PATTERN, description="id from POST /images")],
    alpha: AlphaQuery = None,
    mode: ModeQuery = None,
) -> DecompositionLinks:
    alpha = _alpha_text(alpha)
    mode = mode or request.app.state.model_defaults.mode
    blob = await _cached(request, image_id, alpha, mode, settings, store)
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(blob)).read("manifest.json"))
    q = _query(alpha, mode)
    return DecompositionLinks(
        image_id=image_id,
        alpha=manifest["alpha"],
        mode=mode,
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
async def decompose_zip(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    image_id: ImageIdPath,
    alpha: AlphaQuery = None,
    mode: ModeQuery = None,
) -> Response:
    alpha = _alpha_text(alpha)
    mode = mode or request.app.state.model_defaults.mode
    blob = await _cached(request, image_id, alpha, mode, settings, store)
    return Response(blob, media_type="application/zip", headers=_attachment(f"{image_id[:12]}-decomposition.zip"))


@router.get(
    "/decompose/{image_id}/{component}.png",
    summary="One component of a stored image as a PNG",
    description=(
        "`R` and `L` need no parameter; `L_adj` is the illumination adjusted to a light level, so it needs "
        "`alpha` (`auto` or a number in [0.1, 20]): without it the answer is 422."
    ),
    response_class=Response,
    responses={200: {"description": "the component", "content": {"image/png": {}}}, **problems(404, *WORK_ERRORS)},
)
async def decompose_component(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    image_id: ImageIdPath,
    component: Annotated[Literal["R", "L", "L_adj"], Path(description="R, L or L_adj (needs alpha)")],
    alpha: AlphaQuery = None,
    mode: ModeQuery = None,
) -> Response:
    alpha = _alpha_text(alpha)
    if component == "L_adj" and alpha is None:
        raise Problem(
            422,
            "Missing alpha",
            "L_adj is the illumination adjusted to a light level: pass alpha=auto or a number in [0.1, 20]",
            kind="invalid-alpha",
        )
    mode = mode or request.app.state.model_defaults.mode
    blob = await _cached(request, image_id, alpha, mode, settings, store)
    return Response(zipfile.ZipFile(io.BytesIO(blob)).read(f"{component}.png"), media_type="image/png")


@router.post(
    "/decompose",
    summary="Decompose an uploaded image; all components as one zip",
    response_class=Response,
    openapi_extra=REQUIRED_IMAGE_BODY,
    responses={**ZIP_RESPONSE, **problems(*WORK_ERRORS)},
)
async def decompose_upload(
    request: Request, settings: SettingsDep, store: StoreDep, alpha: AlphaQuery = None, mode: ModeQuery = None
) -> Response:
    alpha = _alpha_text(alpha)
    mode = mode or request.app.state.model_defaults.mode
    blob, image_id = await _compute(request, None, alpha, mode, settings, store)
    return Response(blob, media_type="application/zip", headers=_attachment(f"{image_id[:12]}-decomposition.zip"))


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}
