"""Logging: each request's id, its access-log line and metrics (:class:`RequestContext`), and the formats.

One JSON object per line carrying the request id, or plain text with control characters escaped: either way
one record is one line (tracebacks aside, indented), whatever a client put in a path or header. The
middleware is pure ASGI (not ``BaseHTTPMiddleware``) so streaming bodies and disconnects reach the routes.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import sys
import time
import uuid
from types import TracebackType
from typing import TextIO

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import problem_response
from .metrics import Metrics
from .problems import Problem

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
access_log = logging.getLogger("kind_serve.service.access")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # fullmatch: "$" would admit a trailing newline


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id", ...extra}``; exceptions as one string field."""

    EXTRA = ("method", "path", "route", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        for key in self.EXTRA:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# C0 and C1 control characters (newline, carriage return, escape, …) and the Unicode line separators
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(text: str) -> str:
    r"""Control characters as visible escapes (``\n``, ``\x1b``), so client data cannot forge a log line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger: message`` with control characters escaped; traceback lines are indented."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's naming)
        return _escape(super().formatMessage(record))

    def formatException(  # noqa: N802 (logging's naming)
        self, ei: tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
    ) -> str:
        lines = [_escape(line) for line in super().formatException(ei).splitlines()]
        return "\n".join("  | " + line for line in lines)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record, so a replaced stderr (test capture) is never stale."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass  # StreamHandler.__init__ assigns it; the property above always wins


def configure(level: str = "INFO", json_lines: bool = True) -> None:
    """Route the service's and uvicorn's loggers to stderr in the chosen format."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    for name in ("kind_serve.service", "kind_serve.model", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True  # replaced by the service's own access log


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
        rid = incoming if _SAFE_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        start = time.perf_counter()
        status, started = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                # nosniff: browsers must not read stored bytes as anything but their declared type
                if not any(name.lower() == b"x-content-type-options" for name, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when the shutdown grace period ends; answer 503 so the
            # client retries elsewhere (uvicorn's own answer is a bare 500). The task ends here either way.
            if started:
                raise
            detail = "the server shut down before this request finished; retry it"
            problem = Problem(503, "Service Unavailable", detail, kind="draining", headers={"Connection": "close"})
            await problem_response(Request(scope), problem)(scope, receive, send_with_id)  # counted as draining
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route, f"{status // 100}xx").observe(elapsed)
            method, path, ms = scope["method"], scope["path"], round(elapsed * 1000, 1)
            extra = {"method": method, "path": path, "route": route, "status": status, "duration_ms": ms}
            access_log.info("%s %s %d", method, path, status, extra=extra)
            request_id.reset(token)
