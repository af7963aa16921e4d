"""Prometheus exposition of the app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import MetricsDep, SettingsDep, check_token
from .openapi import problems

router = APIRouter(tags=["probes"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "text exposition format"}, **problems(401)},
)
async def metrics(request: Request, settings: SettingsDep, registry: MetricsDep) -> Response:
    if settings.metrics_require_auth:
        check_token(request, settings)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
