"""Liveness and readiness probes (always open, no model work)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..schemas import Health

router = APIRouter(tags=["probes"])


@router.get("/livez", response_model=Health, summary="The process is up")
async def livez() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Model loaded and warmed, not draining",
    responses={503: {"model": Health, "description": "starting up or shutting down"}},
)
async def readyz(request: Request) -> Health | JSONResponse:
    state = request.app.state
    if getattr(state, "draining", False):
        return JSONResponse({"status": "draining", "detail": "shutting down"}, status_code=503)
    if not getattr(state, "ready", False):
        return JSONResponse({"status": "starting", "detail": "model not loaded yet"}, status_code=503)
    warnings = getattr(state, "warnings", [])  # ready, but slower than it could be (e.g. an emulated precision)
    return Health(status="ok", detail="; ".join(warnings) if warnings else None)
