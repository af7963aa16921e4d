"""``kind serve``: one command-line option per :class:`service.config.Settings` field, served by uvicorn.

The options are derived from the Settings model (name, help text, default); secrets (tokens, passwords, keys)
come only from the environment or secret files, never argv. SIGTERM or Ctrl-C starts a graceful drain
(readiness off, new requests 503, in-flight requests finish within the grace period) and the process exits 0.

uvicorn runs h11 under :class:`LimitedH11Protocol`, which bounds what reaches the app. httptools (uvicorn's
default) reads request heads of any size; h11 bounds the bytes buffered before a head is complete, and over it
this answers ``431`` problem+json instead of uvicorn's plain-text ``400`` (the field count, and heads within the
parser's bound but over ``max_header_bytes``: :class:`service.admission.UploadGate`). uvicorn closes a silent
connection only *after* a response; this starts the idle timer when a connection opens, gives each head
``header_timeout_s`` from its first byte (then ``408``), and answers ``503`` and closes a connection beyond
``max_connections``. ``X-Forwarded-For`` is believed only from ``trusted_proxies``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import h11
import uvicorn
from pydantic.fields import FieldInfo
from uvicorn.protocols.http.h11_impl import H11Protocol

from kind_serve.model import BundleError, InferenceDefaults, load_bundle

from . import logs
from .app import begin_drain, create_app
from .config import Limits, Settings, explain
from .errors import REASONS
from .inference import geometry
from .metrics import Metrics
from .problems import PROBLEM_JSON, Problem

log = logging.getLogger("kind_serve.service")

# the short spellings docs/service.md shows beside the derived ones
ALIASES = {"max_pending_requests": "--max-pending", "request_timeout_s": "--timeout"}
ENV_ONLY = {"auth_tokens"}  # secrets: a command line is visible to every user of the machine (ps)


def setting_options() -> dict[str, FieldInfo]:
    """The Settings fields that are command-line options, by field name."""
    fields = Settings.model_fields.items()
    return {name: info for name, info in fields if name not in ENV_ONLY and "SecretStr" not in str(info.annotation)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kind serve", description="Serve KinD enhancement over HTTP.")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    for name, info in setting_options().items():
        flags = [f"--{name.replace('_', '-')}", *([ALIASES[name]] if name in ALIASES else [])]
        default = info.get_default(call_default_factory=True)
        default = "none" if default in (None, []) else default
        text = f"{info.description} (KIND_{name.upper()}; default: {default})".replace("%", "%%")
        if info.annotation is bool:
            p.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:  # a string: Settings parses and validates it as it does the environment variable
            p.add_argument(*flags, dest=name, default=None, metavar=name.split("_")[-1].upper(), help=text)
    return p.parse_args(argv)


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

    bounds = {"metrics": metrics, "retry_after_s": limits.retry_after_s, "max_connections": limits.max_connections}
    protocol = type(
        "ServiceH11Protocol", (LimitedH11Protocol,), {**bounds, "header_timeout_s": limits.header_timeout_s}
    )
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "timeout_keep_alive": limits.idle_timeout_s,
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise, so on a machine without a proxy
        # any local client could pose as any address and take another client's share
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies),
    }


class DrainingServer(uvicorn.Server):
    """uvicorn server whose exit signal first closes admissions, and which exits 0 after SIGTERM."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutdown; a drained SIGTERM is a clean stop (exit 0)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list) and sig == signal.SIGTERM:
            captured[:] = [s for s in captured if s != signal.SIGTERM]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        args = args[1:]
    ns = parse_args(args)
    overrides = {name: getattr(ns, name) for name in setting_options() if getattr(ns, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # ValidationError, or a KIND_*_FILE that cannot be read
        sys.stderr.write(f"kind serve: invalid settings:\n{explain(exc)}\n")
        return 2
    logs.configure(settings.log_level, settings.json_logs)
    # refuse to start on a missing or corrupt bundle (naming the file), or a tile size its overlap does not fit
    try:
        bundle = load_bundle(settings.checkpoint)
        geometry(settings, InferenceDefaults.from_manifest(bundle.inference), Limits())
    except (BundleError, OSError, ValueError) as exc:
        problem = "cannot load checkpoint: " if isinstance(exc, (BundleError, OSError)) else ""
        sys.stderr.write(f"kind serve: {problem}{exc}\n")
        return 2
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=ns.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
        **server_options(settings, app.state.limits, app.state.metrics),
    )
    server = DrainingServer(config, on_exit=lambda: begin_drain(app))
    log.info("serving %s on http://%s:%d", settings.checkpoint, settings.host, ns.port)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
