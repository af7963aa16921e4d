"""The demo page: ``GET /`` and its two assets under ``/demo/``, shipped in ``service/static`` (no build step).

The page holds no data and is served to anyone: everything it shows comes from the API, which keeps its own
auth (the page asks for a token when one is needed). Its Content-Security-Policy keeps it to this origin.
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
