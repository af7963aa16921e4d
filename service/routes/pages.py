"""The HTML pages: the demo page (``GET /`` and its assets under ``/demo/``), Swagger UI and ReDoc.

The demo page (``service/static``, no build step) holds no data and is served to anyone: everything it shows
comes from the API, which keeps its own auth. ``/openapi.json``, ``/docs`` and ``/redoc`` follow the API's auth;
the docs pages load their assets from this server (the ``fastapi-offline`` package), so they render offline.
A Content-Security-Policy keeps every page to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..deps import require_token
from ..problems import Problem
from .params import ProblemDetail

STATIC = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {"demo.js": "text/javascript; charset=utf-8", "demo.css": "text/css; charset=utf-8"}
PRIVATE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
DEMO_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    **PRIVATE,
    "Cache-Control": "no-cache",  # revalidated (ETag) so an upgraded service never pairs old JS with new HTML
}
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs-assets"
OPENAPI_URL = "/openapi.json"
REDIRECT_URL = "/docs/oauth2-redirect"
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)  # blocks without attributes: no src

demo = APIRouter(include_in_schema=False)
docs = APIRouter(include_in_schema=False, dependencies=[Depends(require_token)])


@demo.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=DEMO_HEADERS)


@demo.get("/demo/{name}")
async def asset(name: str) -> FileResponse:
    if name not in MEDIA_TYPES:
        raise Problem(404, "Not Found", f"the demo page has no asset {name!r}", kind="not-found")
    return FileResponse(STATIC / name, media_type=MEDIA_TYPES[name], headers=DEMO_HEADERS)


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
    csp = (
        f"default-src 'self'; script-src {scripts}; style-src {styles}; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    page.headers.update({"Content-Security-Policy": csp, "X-Frame-Options": "DENY", **PRIVATE})
    return page


@docs.get(OPENAPI_URL)
async def openapi_schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@docs.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=root + OPENAPI_URL,
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=root + REDIRECT_URL,
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
    )
    return secured(page)


@docs.get(REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return secured(get_swagger_ui_oauth2_redirect_html())


@docs.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=root + OPENAPI_URL,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    return secured(page, runtime_styles=True)


def install(app: FastAPI) -> None:
    """The pages, the docs' assets, and ProblemDetail in the schema (the ``problems()`` entries reference it).

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
    app.include_router(demo)
    app.include_router(docs)
