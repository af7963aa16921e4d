"""Plain ASGI middleware: per-request context (request id, access log, metrics) and the upload gate.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streaming bodies and client disconnects reach the routes
unchanged. :class:`UploadGate` receives request bodies before any route runs, under a deadline, a minimum
rate and the upload budget of :mod:`service.admission`, so a slow upload never holds an admission slot.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import logs
from .admission import Admission, client_key
from .auth import check_token
from .config import Settings
from .errors import Problem, problem_response, upload_too_large
from .metrics import Metrics

log = logging.getLogger("kind_serve.service.access")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # fullmatch: "$" would admit a trailing newline


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
        token = logs.request_id.set(rid)
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
            closing = {"Retry-After": "1", "Connection": "close"}
            problem = Problem(503, "Service Unavailable", detail, kind="draining", headers=closing)
            await problem_response(Request(scope), problem)(scope, receive, send_with_id)  # counted as draining
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route, f"{status // 100}xx").observe(elapsed)
            method, path, ms = scope["method"], scope["path"], round(elapsed * 1000, 1)
            extra = {"method": method, "path": path, "route": route, "status": status, "duration_ms": ms}
            log.info("%s %s %d", method, path, status, extra=extra)
            logs.request_id.reset(token)


class UploadGate:
    """Header limits (431) and bounded body receiving: 408 past the deadline or below the minimum rate.

    The whole body is received here, then replayed to the app in one message; disconnects still reach the
    app afterwards. Bodies of requests without a valid token (when auth is on) are not received at all.
    """

    def __init__(self, app: ASGIApp, settings: Settings, admission: Admission) -> None:
        self.app = app
        self.settings = settings
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_headers(scope)
            if not _has_body(scope):
                await self.app(scope, receive, send)
                return
            check_token(Request(scope), self.settings)
            body = await self._receive_body(scope, receive)
            if body is None:  # the client went away while sending
                raise Problem(499, "Client Closed Request", "gone", kind="disconnected")
        except Problem as problem:
            problem.headers["Connection"] = "close"  # the rest of the body is not read
            await problem_response(Request(scope), problem)(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _check_headers(self, scope: Scope) -> None:
        headers, limits = scope["headers"], self.admission.limits
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
        size += sum(len(k) + len(v) + 4 for k, v in headers)
        if len(headers) > limits.max_header_fields:
            detail = f"the request has {len(headers)} header fields; the limit is {limits.max_header_fields}"
        elif size > limits.max_header_bytes:
            detail = f"the request line and headers take {size} bytes; the limit is {limits.max_header_bytes}"
        else:
            return
        raise Problem(431, "Request Header Fields Too Large", detail, kind="headers-too-large")

    async def _receive_body(self, scope: Scope, receive: Receive) -> bytes | None:
        s = self.settings
        declared = Headers(scope=scope).get("content-length", "").strip()
        if declared.isdigit() and int(declared) > s.max_upload_bytes:
            raise upload_too_large(s.max_upload_bytes)
        client = client_key(scope, s)
        limits = self.admission.limits
        start = time.monotonic()
        chunks: list[bytes] = []
        received = 0
        try:
            while True:
                # the next bytes must arrive before the whole-body deadline and before the average rate
                # since the start falls below the minimum (checked from the end of the grace period on)
                due = start + limits.upload_timeout_s
                if limits.upload_min_bytes_per_s:
                    due = min(due, start + max(limits.upload_grace_s, received / limits.upload_min_bytes_per_s))
                try:
                    message = await asyncio.wait_for(receive(), max(due - time.monotonic(), 0))
                except TimeoutError:
                    detail = (
                        f"the body was not received in time ({received} bytes in {time.monotonic() - start:.1f} s): "
                        f"uploads must finish within {limits.upload_timeout_s:g} s and average at least "
                        f"{limits.upload_min_bytes_per_s} bytes/s after the first {limits.upload_grace_s:g} s"
                    )
                    raise Problem(408, "Request Timeout", detail, kind="upload-timeout") from None
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                if received + len(chunk) > s.max_upload_bytes:
                    raise upload_too_large(s.max_upload_bytes)
                self.admission.take_upload(client, len(chunk))
                received += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        finally:
            self.admission.give_upload(client, received)


def _has_body(scope: Scope) -> bool:
    headers = Headers(scope=scope)
    length, chunked = headers.get("content-length", "").strip(), headers.get("transfer-encoding", "").strip()
    return length not in ("", "0") or bool(chunked)
