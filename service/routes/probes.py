"""Probes: liveness and readiness (always open, no model work) and Prometheus' ``/metrics``.

``/metrics`` is on the API port behind the bearer token when auth is on, unless ``metrics_address`` gives it a
listener of its own (for a scraper admitted by the network, not a token; :meth:`service.metrics.Metrics.serve`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from ..auth import check_token
from ..problems import Problem
from .params import problems

router = APIRouter(tags=["probes"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    detail: str | None = None


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


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "text exposition format"}, **problems(401, 404)},
)
async def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    if settings.metrics_address is not None:
        raise Problem(404, "Not Found", "metrics are served on their own port (KIND_METRICS_ADDRESS)", kind="not-found")
    check_token(request, settings)  # the API's auth: a scraper without the token uses metrics_address
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
