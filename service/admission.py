"""Admission: whether a request may start receiving, computing or storing now, and for whom.

The one place that decides; routes and the upload gate ask it, the batcher only counts slots. Three
capacities, each with a per-client part of ``client_share`` (a client is its bearer token when auth is on,
else its address):

- **upload budget** — bytes of request bodies being received at once (``upload_budget_bytes``); receiving
  never holds a compute slot, so slow uploads cannot lock out computing requests;
- **admission slots** — requests parsing, queued or computing (``max_pending_requests``, held as batcher
  tickets); light work (probing an upload, reading a cached result) takes a slot too;
- **image store** — bytes stored on a client's behalf and not yet expired (of ``store_max_bytes``): its uploads,
  the decompositions and job records and results its requests produced, so that one client cannot evict
  everyone's entries from the LRU. Every write through the request's store is charged (``deps.get_store``).

Over the whole capacity → 503 with Retry-After (the server is busy); over a client's part → 429 with
Retry-After (this client is). Each refusal is counted in ``kind_failures_total`` by reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from .batcher import Batcher, Cancelled, DeadlineExceeded, Ticket
from .config import Settings
from .errors import Problem


def client_key(scope: Scope, settings: Settings) -> str:
    """Who sends this request: its valid bearer token (as its store scope or a digest) when auth is on, else
    its address (the proxy's, unless uvicorn is told to trust its X-Forwarded-For)."""
    checked = scope.get("state", {}).get("client_scope")  # set by deps.check_token
    if checked:
        return "token:" + checked
    if settings.auth_enabled:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                # the same digest comparison as deps.check_token (every token, no early exit), and its scope
                matched = scope["app"].state.tokens.match(token.strip())
                if scheme.lower() == "bearer" and matched is not None:
                    return "token:" + matched
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


T = TypeVar("T")
_POLL_S = 0.1  # how often a blocking step checks for a disconnect


async def blocking(ticket: Ticket, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the thread pool for an admitted request, given up at its deadline or disconnect.

    The request is answered then (504, or dropped for a gone client) and its slot freed; the thread itself
    cannot be interrupted and finishes on its own, its result discarded. The pre-scan and the pixel limit
    bound how long that can be (docs/reliability.md).
    """
    task = asyncio.ensure_future(run_in_threadpool(fn, *args))
    while True:
        remaining = ticket.deadline - time.monotonic()  # the batcher's clock
        done, _ = await asyncio.wait({task}, timeout=max(0.0, min(remaining, _POLL_S)))
        if done:
            return task.result()
        if ticket.cancelled and ticket.cancelled != "timeout":
            task.add_done_callback(_discard)
            raise Cancelled(ticket.cancelled)
        if remaining <= 0:
            task.add_done_callback(_discard)
            ticket.cancel("timeout")
            raise DeadlineExceeded("the image was not decoded within the request deadline")


def _discard(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned step's error is not logged as unhandled


def _busy(detail: str, kind: str, retry_after: int) -> Problem:
    return Problem(503, "Service Unavailable", detail, kind=kind, headers={"Retry-After": str(retry_after)})


def _greedy(detail: str, retry_after: int) -> Problem:
    return Problem(429, "Too Many Requests", detail, kind="client-share", headers={"Retry-After": str(retry_after)})


class StoreShareFull(Problem):
    """429: storing an entry would take the client past its share of the image store."""


class Admission:
    """Counts what each client holds of the three capacities (see the module docstring); event-loop only."""

    def __init__(self, settings: Settings, batcher: Batcher, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.batcher = batcher
        self.clock = clock
        self.slot_quota = settings.client_quota(settings.max_pending_requests)
        self.upload_quota = settings.client_quota(settings.upload_budget_bytes)
        self.store_quota = settings.client_quota(settings.store_max_bytes)
        self.slots: collections.Counter[str] = collections.Counter()
        self.receiving: collections.Counter[str] = collections.Counter()
        self.receiving_total = 0
        self._stored: dict[str, dict[str, tuple[int, float]]] = {}

    # -- admission slots ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self, client: str, *, light: bool = False) -> Iterator[Ticket]:
        """A batcher ticket for ``client``'s request; ``light``: the request will queue no model work."""
        with self.batcher.admit() as ticket:  # a full service answers 503 whoever asks
            if self.slots[client] >= self.slot_quota:
                raise _greedy(
                    f"this client already has {self.slots[client]} requests in progress, its share of the "
                    f"{self.settings.max_pending_requests} slots; wait for one to finish",
                    self.settings.retry_after_s,
                )
            if light:
                ticket.final = True  # workers need not wait for items from it
            self.slots[client] += 1
            try:
                yield ticket
            finally:
                self.slots[client] -= 1
                if not self.slots[client]:
                    del self.slots[client]

    # -- upload budget -----------------------------------------------------------------------------
    def take_upload(self, client: str, size: int) -> None:
        """Count ``size`` more received bytes for ``client`` (503 / 429 when over the budget or its part)."""
        if self.receiving_total + size > self.settings.upload_budget_bytes:
            raise _busy(
                f"{self.receiving_total} bytes of uploads are being received; retry later",
                "upload-budget",
                self.settings.retry_after_s,
            )
        if self.receiving[client] + size > self.upload_quota:
            raise _greedy(
                f"this client is already sending {self.receiving[client]} bytes, its share of the upload "
                "budget; wait for its other uploads to finish",
                self.settings.retry_after_s,
            )
        self.receiving[client] += size
        self.receiving_total += size

    def give_upload(self, client: str, size: int) -> None:
        self.receiving[client] -= size
        self.receiving_total -= size
        if not self.receiving[client]:
            del self.receiving[client]

    # -- image store -------------------------------------------------------------------------------
    def charge_store(self, client: str, key: str, size: int) -> None:
        """Record that ``client`` stores ``size`` bytes under ``key`` until the TTL (429 over its part)."""
        now = self.clock()
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
