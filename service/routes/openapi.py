"""OpenAPI fragments shared by the routes (problem responses, the image request body) and the docs pages.

``/docs`` (Swagger UI) and ``/redoc`` load their assets from this server (the ``fastapi-offline`` package), so
they render offline; like the demo page, a Content-Security-Policy keeps them to this origin.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from ..deps import require_token
from ..imaging import DECODERS


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


DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs-assets"
OPENAPI_URL = "/openapi.json"
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)  # blocks without attributes: no src


def secured(page: HTMLResponse, *, runtime_styles: bool = False) -> HTMLResponse:
    """``page`` with the demo page's security headers and a CSP admitting exactly its own inline blocks.

    ``runtime_styles``: the page's script inserts ``<style>`` elements (ReDoc's styled-components), which no
    hash can name, so inline styles are allowed; inline scripts never are.
    """
    sources: dict[bytes, list[str]] = {b"script": ["'self'"], b"style": ["'self'"]}
    for tag, text in _INLINE.findall(page.body):
        sources[tag].append("'sha256-" + base64.b64encode(hashlib.sha256(text).digest()).decode() + "'")
    if runtime_styles:
        sources[b"style"] = ["'self'", "'unsafe-inline'"]  # a hash beside it would void 'unsafe-inline'
    scripts, styles = " ".join(sources[b"script"]), " ".join(sources[b"style"])
    page.headers.update(
        {
            "Content-Security-Policy": (
                f"default-src 'self'; script-src {scripts}; style-src {styles}; "
                "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
                "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
    )
    return page


def install_docs(app: FastAPI) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc`` behind the API's auth, with the docs' assets served locally;
    the schema holds ProblemDetail, which the ``problems()`` entries reference. The schema and the pages follow
    the API's auth; the static assets (the public Swagger UI and ReDoc scripts) are open.

    Create the app with ``docs_url``, ``redoc_url`` and ``openapi_url`` set to None.
    """
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = original().setdefault("components", {}).setdefault("schemas", {})
            schemas["ProblemDetail"] = ProblemDetail.model_json_schema(ref_template="#/components/schemas/{model}")
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    get = functools.partial(app.get, include_in_schema=False, dependencies=[Depends(require_token)])

    @get(OPENAPI_URL)
    async def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        assets = root + ASSETS_URL
        page = get_swagger_ui_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + redirect_url,
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
        )
        return secured(page)

    @get(redirect_url)
    async def swagger_ui_redirect() -> HTMLResponse:
        return secured(get_swagger_ui_oauth2_redirect_html())

    @get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        assets = root + ASSETS_URL
        page = get_redoc_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )
        return secured(page, runtime_styles=True)
