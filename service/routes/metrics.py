"""Prometheus exposition of the app's own registry: ``/metrics`` on the API port (behind the bearer token when
auth is on), or a separate listener on ``metrics_address`` (for a scraper admitted by the network, not a token).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server

from ..auth import check_token
from ..config import Settings, split_address
from ..deps import MetricsDep, SettingsDep
from ..errors import Problem
from ..metrics import Metrics
from .openapi import problems

router = APIRouter(tags=["probes"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "text exposition format"}, **problems(401, 404)},
)
async def metrics(request: Request, settings: SettingsDep, registry: MetricsDep) -> Response:
    if settings.metrics_address is not None:
        raise Problem(404, "Not Found", "metrics are served on their own port (KIND_METRICS_ADDRESS)", kind="not-found")
    check_token(request, settings)  # the API's auth: a scraper without the token uses metrics_address
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)


def start_metrics_server(settings: Settings, registry: Metrics) -> Callable[[], None] | None:
    """The ``metrics_address`` listener (Prometheus' own WSGI server in a thread), or None; returns its stop."""
    if settings.metrics_address is None:
        return None
    host, port = split_address(settings.metrics_address)
    server, thread = start_http_server(port, host, registry.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
