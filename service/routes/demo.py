"""The demo page: ``GET /`` and its two assets under ``/demo/``, shipped in ``service/static`` (no build step).

The page holds no data: it is plain HTML, CSS and JavaScript, served to anyone, and everything it shows comes
from the API (``POST /images``, ``POST /enhance``, ``GET /decompose``), which keeps its own auth. When
bearer tokens are configured the page asks for one and sends it as ``Authorization: Bearer``. A strict
Content-Security-Policy keeps the page to this origin: no CDN, no inline script, works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ..errors import Problem

STATIC = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {"demo.js": "text/javascript; charset=utf-8", "demo.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag) so an upgraded service never pairs old JS with new HTML
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@router.get("/demo/{name}")
async def asset(name: str) -> FileResponse:
    if name not in MEDIA_TYPES:
        raise Problem(404, "Not Found", f"the demo page has no asset {name!r}", kind="not-found")
    return FileResponse(STATIC / name, media_type=MEDIA_TYPES[name], headers=SECURITY_HEADERS)
