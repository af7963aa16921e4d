"""Per-request context as plain ASGI middleware: request id, access log, request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streaming bodies and client disconnects reach the routes
unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import logs
from .errors import PROBLEM_JSON, TYPE_BASE
from .metrics import Metrics

log = logging.getLogger("service.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContext:
    """Assigns ``X-Request-ID`` (the client's when well-formed), logs one line and counts the request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = logs.request_id.set(rid)
        start = time.perf_counter()
        status = 500

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when the shutdown grace period ends; answer 503 so the
            # client retries elsewhere (uvicorn's own answer is a bare 500). The task ends here either way.
            if started:
                raise
            status = 503
            self.metrics.fail("draining")
            await send_with_id(_cut_off(scope["path"], rid))
            await send({"type": "http.response.body", "body": _cut_off_body(scope["path"], rid)})
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route, f"{status // 100}xx").observe(elapsed)
            log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )
            logs.request_id.reset(token)


def _cut_off_body(path: str, rid: str) -> bytes:
    detail = "the server shut down before this request finished; retry it"
    problem = {"type": TYPE_BASE + "draining", "title": "Service Unavailable", "status": 503, "detail": detail}
    return json.dumps({**problem, "instance": path, "request_id": rid}).encode()


def _cut_off(path: str, rid: str) -> Message:
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(_cut_off_body(path, rid))).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    return {"type": "http.response.start", "status": 503, "headers": headers}
