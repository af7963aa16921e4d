"""Admission: whether a request may start receiving, computing or storing now, and for whom.

The one place that decides; routes and :class:`UploadGate` ask it, the batcher only counts slots. Each capacity
has a per-client part: over the whole → 503, over a client's part → 429 (docs/service.md, "How requests are
batched"). When the last admitted request has been gone for a moment, the freed heap is handed back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterator

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kind_serve.model.cpu import release_freed_memory, resident_bytes

from .auth import bearer_scope, check_token
from .batcher import Batcher, Ticket
from .config import Limits, Settings
from .decoding import DECODE_TIMEOUT_S, DECODE_WORKERS, DecodePool
from .errors import problem_response
from .problems import Problem, upload_too_large


def client_key(scope: Scope, settings: Settings) -> str:
    """Who sends this request: its valid bearer token (as its store scope or a digest) when auth is on, else
    its address (the proxy's, unless uvicorn is told to trust its X-Forwarded-For)."""
    checked = scope.get("state", {}).get("client_scope")  # set by auth.check_token
    if checked:
        return "token:" + checked
    if settings.auth_enabled:  # not checked yet (a request without a body): the same check, not its 401
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                matched = bearer_scope(value.decode("latin-1"), scope["app"].state.tokens)
                if matched is not None:
                    return "token:" + matched
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


# idle this long before the heap is trimmed, and only when the process holds this much more than after its
# last trim: back-to-back requests, and what an ordinary photo leaves, keep the speed of reuse (model/cpu.py)
_TRIM_AFTER_IDLE_S = 2.0
_TRIM_ABOVE_BYTES = 200 << 20


class StoreShareFull(Problem):
    """429: storing an entry would take the client past its share of the image store."""


class Admission:
    """Counts what each client holds of the three capacities (see the module docstring); event-loop only."""

    def __init__(self, settings: Settings, batcher: Batcher, limits: Limits) -> None:
        self.settings = settings
        self.limits = limits
        self.batcher = batcher
        memory = settings.decode_memory_mb << 20
        self.decoders = DecodePool(DECODE_WORKERS, memory, DECODE_TIMEOUT_S, settings.max_pixels, batcher.metrics)
        self.slot_quota = settings.client_quota(settings.max_pending_requests)
        self.upload_quota = settings.client_quota(limits.upload_budget_bytes)
        self.store_quota = settings.client_quota(settings.store_max_bytes)
        self.pixel_quota = settings.client_quota(int(settings.max_inflight_megapixels * 1_000_000))
        self.slots: collections.Counter[str] = collections.Counter()
        self.pixels: collections.Counter[str] = collections.Counter()
        self._charged: dict[Ticket, int] = {}  # pixels each open ticket charged to its client
        self._admitted = 0  # requests admitted so far: a trim is due only if none came since it was planned
        self._rss_floor: int | None = None  # resident bytes right after the lowest trim so far
        self.receiving: collections.Counter[str] = collections.Counter()
        self.receiving_total = 0
        self._stored: dict[str, dict[str, tuple[int, float]]] = {}

    @contextlib.contextmanager
    def admit(self, client: str, *, light: bool = False) -> Iterator[Ticket]:
        """A batcher ticket for ``client``'s request; ``light``: the request will queue no model work."""
        with self.batcher.admit() as ticket:  # a full service answers 503 whoever asks
            if self.slots[client] >= self.slot_quota:
                raise self._greedy(
                    f"this client already has {self.slots[client]} requests in progress, its share of the "
                    f"{self.settings.max_pending_requests} slots; wait for one to finish",
                )
            if light:
                ticket.final = True  # workers need not wait for items from it
            ticket.client, ticket.admission = client, self
            self.slots[client] += 1
            self._admitted += 1
            try:
                yield ticket
            finally:
                self.pixels[client] -= self._charged.pop(ticket, 0)
                if self.pixels[client] <= 0:
                    del self.pixels[client]
                self.slots[client] -= 1
                if not self.slots[client]:
                    del self.slots[client]
                if not self.slots:
                    self._plan_trim()

    def _greedy(self, detail: str) -> Problem:
        retry = {"Retry-After": str(self.limits.retry_after_s)}
        return Problem(429, "Too Many Requests", detail, kind="client-share", headers=retry)

    def reserve_pixels(self, client: str, ticket: Ticket, pixels: int) -> None:
        """Charge ``pixels`` decoded pixels to ``client``'s admitted ``ticket`` until it closes: 413 when one
        client may never hold that many, 429 over its part now, 503 over the whole budget (the batcher)."""
        quota = self.pixel_quota
        budget = self.settings.max_inflight_megapixels
        if pixels > quota:
            detail = (
                f"the image decodes to {pixels / 1e6:.1f} megapixels, more than one client may have in progress: "
                f"{quota / 1e6:g} of the {budget:g} in-flight megapixels (KIND_CLIENT_SHARE × "
                "KIND_MAX_INFLIGHT_MEGAPIXELS); downscale it first"
            )
            raise Problem(413, "Image too large", detail, kind="too-large")
        if self.pixels[client] + pixels > quota:
            raise self._greedy(
                f"this client already has {self.pixels[client] / 1e6:.1f} megapixels in progress and this image "
                f"decodes to {pixels / 1e6:.1f}: its share is {quota / 1e6:g} of the {budget:g} in-flight "
                "megapixels; wait for its other requests to finish",
            )
        ticket.reserve(pixels)
        self.pixels[client] += pixels
        self._charged[ticket] = self._charged.get(ticket, 0) + pixels

    def _plan_trim(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop (a test driving admission directly)
            asyncio.get_running_loop().call_later(_TRIM_AFTER_IDLE_S, self._trim_if_idle, self._admitted)

    def _trim_if_idle(self, planned: int) -> None:
        if not self.slots and self._admitted == planned:
            asyncio.get_running_loop().run_in_executor(None, self._trim)

    def _trim(self) -> None:
        """(In a worker thread) give the heap back when it holds more than ``_TRIM_ABOVE_BYTES`` over the lowest
        footprint seen after a trim."""
        floor = self._rss_floor
        if floor is not None and resident_bytes() <= floor + _TRIM_ABOVE_BYTES:
            return
        release_freed_memory()
        after = resident_bytes()
        self._rss_floor = after if floor is None else min(floor, after)

    def take_upload(self, client: str, size: int) -> None:
        """Count ``size`` more received bytes for ``client`` (503 / 429 when over the budget or its part)."""
        if self.receiving_total + size > self.limits.upload_budget_bytes:
            detail = f"{self.receiving_total} bytes of uploads are being received; retry later"
            raise Problem(503, "Service Unavailable", detail, kind="upload-budget")
        if self.receiving[client] + size > self.upload_quota:
            raise self._greedy(
                f"this client is already sending {self.receiving[client]} bytes, its share of the upload "
                "budget; wait for its other uploads to finish",
            )
        self.receiving[client] += size
        self.receiving_total += size

    def give_upload(self, client: str, size: int) -> None:
        self.receiving[client] -= size
        self.receiving_total -= size
        if not self.receiving[client]:
            del self.receiving[client]

    def charge_store(self, client: str, key: str, size: int) -> None:
        """Record that ``client`` stores ``size`` bytes under ``key`` until the TTL (429 over its part)."""
        now = time.monotonic()
        entries = self._stored.setdefault(client, {})
        for old in [k for k, (_, expiry) in entries.items() if expiry <= now]:
            del entries[old]
        held = sum(n for k, (n, _) in entries.items() if k != key)
        if held + size > self.store_quota:
            first_expiry = min((expiry for _, expiry in entries.values()), default=now)
            raise StoreShareFull(
                429,
                "Too Many Requests",
                f"this client has {held} bytes stored, its share of the {self.settings.store_max_bytes}-byte "
                "image store (images, decompositions, job results); they expire after the store TTL",
                kind="client-share",
                headers={"Retry-After": str(max(1, int(first_expiry - now) + 1))},
            )
        entries[key] = (size, now + self.settings.store_ttl_s)


class UploadGate:
    """Header limits (431) and bounded body receiving: 408 past the deadline or below the minimum rate.

    The whole body is received here, then replayed to the app in one message; disconnects still reach the
    app afterwards. Bodies of requests without a valid token (when auth is on) are not received at all.
    """

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
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
            check_token(Request(scope), self.admission.settings)
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
        s = self.admission.settings
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
