"""The HTTP/1.1 server uvicorn runs for the service: bounds on request heads, connections and client identity.

uvicorn's default parser (httptools) reads a request line and headers of any size and count into memory. h11
bounds the bytes buffered before a head is complete (``h11_max_incomplete_event_size``); over it, this protocol
answers ``431`` problem+json instead of uvicorn's plain-text ``400`` (the count of fields, and heads that fit
the parser's bound but not ``max_header_bytes``: :class:`service.middleware.UploadGate`).

uvicorn closes a silent connection only *after* a response; before a connection's first request, and while a
head arrives byte by byte, it waits forever. This protocol starts the idle timer when a connection opens, gives
each request head ``header_timeout_s`` from its first byte (then ``408``), and answers ``503`` and closes a
connection beyond ``max_connections``. ``X-Forwarded-For`` is believed only from ``trusted_proxies``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import Limits, Settings
from .errors import PROBLEM_JSON, REASONS, Problem
from .metrics import Metrics

log = logging.getLogger(__name__)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the module's bounds; the limits (and the app's metrics, which count each
    refusal) are class attributes: :func:`server_options` subclasses it with the configured values."""

    header_timeout_s: float = 10.0
    max_connections: int = 512
    retry_after_s: int = 1
    metrics: Metrics | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's limit_concurrency is not used: it keeps accepting and holding sockets beyond the limit and
        # refuses only their requests (in plain text), so idle connections would still pile up
        if len(self.connections) > self.max_connections:
            detail = f"{self.max_connections} connections are open; retry later"
            self._answer(503, "Service Unavailable", "too-many-connections", detail, self.retry_after_s)
            return
        # the keep-alive timer doubles as the idle timer before the first request (uvicorn arms it only after
        # a response); the first byte received cancels it, as it does between requests
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:  # the first byte of a request head
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_too_slow)
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the head is complete: the body has its own deadlines
            self._stop_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        detail = f"the request line and headers were not received within {self.header_timeout_s:g} s"
        self._answer(408, "Request Timeout", "header-timeout", detail)

    def send_400_response(self, msg: str) -> None:
        buffered, _ = self.conn.trailing_data
        limit = self.config.h11_max_incomplete_event_size or 0
        if limit and len(buffered) > limit:
            detail = f"the request line and headers exceed {limit} bytes"
            self._answer(431, "Request Header Fields Too Large", "headers-too-large", detail)
        else:
            self._answer(400, "Bad Request", "bad-http-request", "the request is not valid HTTP/1.1")

    def _answer(self, status: int, title: str, kind: str, detail: str, retry_after: int | None = None) -> None:
        """``status`` as problem+json before or instead of a request, then close the connection."""
        # a malformed request (bad-http-request) is the client's, not counted
        if self.metrics is not None and kind in REASONS:
            self.metrics.fail(REASONS[kind])
        self._stop_head_timer()
        self._unset_keepalive_if_required()
        body = json.dumps(Problem(status, title, detail, kind=kind).body()).encode()
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-content-type-options", b"nosniff"),
        ]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        try:
            response = h11.Response(status_code=status, headers=headers, reason=title)
            for event in (response, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response already started on this connection: just close it
            log.debug("closing a connection mid-response without a %d answer", status)
        self.transport.close()


def server_options(settings: Settings, limits: Limits, metrics: Metrics | None = None) -> dict[str, Any]:
    """``uvicorn.Config`` keywords that apply ``limits`` on request heads and connections and ``settings``'
    trusted proxies; ``metrics`` (the app's) counts the requests and connections refused before they reach the
    app."""

    class ServiceH11Protocol(LimitedH11Protocol):
        header_timeout_s = limits.header_timeout_s
        max_connections = limits.max_connections
        retry_after_s = limits.retry_after_s

    ServiceH11Protocol.metrics = metrics
    return {
        "http": ServiceH11Protocol,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "timeout_keep_alive": limits.idle_timeout_s,
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise, so on a machine without a proxy
        # any local client could pose as any address and take another client's share
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies),
    }
