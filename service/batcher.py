"""Dynamic batcher: admission, the work queue, deadlines and failure isolation (after LitServe's loops).

A request is admitted as a :class:`Ticket` (or refused at once when ``max_pending`` requests are in
flight), then submits work items: whole images or tiles, already normalised and padded to a size bucket.
Workers call :meth:`Batcher.serve` with their compute function; each batch holds items of one
:class:`BatchKey` (operation, mode and padded size), so tiles of large images from several requests batch
together. Batching rules:

- a free worker takes the oldest item of the client (``Ticket.client``) served longest ago, then every
  compatible queued item, up to ``max_batch_size`` items and ``pixel_budget`` pixels: clients take turns, so
  a small request waits for one batch per other busy client, not behind all of one client's job tiles;
- it waits for more (at most ``max_queue_delay`` after the oldest item was queued) only while another
  admitted request is still preparing its items; an idle service with nothing in preparation never waits;
- items past their deadline are answered :class:`DeadlineExceeded` and items of cancelled tickets
  (client disconnected, request timed out) are dropped, both before compute;
- failures are isolated per item (:func:`service.batches.run_isolated`); the loop never dies and stops on
  a sentinel (:meth:`stop`).

The request side lives in :mod:`service.tickets` (a :class:`Ticket` calls back into the batcher through
:class:`~service.tickets.TicketQueue`, so neither module imports the other's code at run time), a batch and
its running in :mod:`service.batches`. The request-side names are importable from here too.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .batches import Batch, Compute, Item, run_isolated
from .config import Limits, Settings
from .metrics import Metrics
from .tickets import BatchKey, Cancelled, DeadlineExceeded, Draining, QueueFull, Ticket
from .workload import Workload

log = logging.getLogger(__name__)


_STOP = object()


def _default(name: str) -> Any:
    """The default of a :class:`~service.config.Settings` field: the batcher's defaults are the service's."""
    return Settings.model_fields[name].default


# a few ms adds little to a model pass of tens of ms, and lets requests arriving together share a batch
MAX_QUEUE_DELAY_S = 0.005
# pixels per batch: bounds activation memory, which grows with it (about 330 bytes a pixel in bf16,
# docs/performance.md). GPUs gain throughput from larger batches; CPUs do not (1.79 against 1.76 s/MP for one
# and four 832-px tiles), so there the budget is about one networks' tile, and a large photo's peak is lower
PIXEL_BUDGET = 3_000_000
CPU_PIXEL_BUDGET = 1_000_000


def pixel_budget(devices: Iterable[torch.device]) -> int:
    """The pixels per batch for workers on ``devices``: :data:`PIXEL_BUDGET` when one is a GPU, else
    :data:`CPU_PIXEL_BUDGET`."""
    return PIXEL_BUDGET if any(device.type == "cuda" for device in devices) else CPU_PIXEL_BUDGET


@dataclass
class Batcher:
    """Bounded admission plus one queue shared by every worker (see the module docstring).

    The service builds it with :meth:`from_settings`; the field defaults are the Settings defaults.
    """

    max_batch_size: int = _default("max_batch_size")
    max_queue_delay: float = MAX_QUEUE_DELAY_S
    pixel_budget: int = PIXEL_BUDGET
    max_pending: int = _default("max_pending_requests")
    max_inflight_pixels: int = int(_default("max_inflight_megapixels") * 1_000_000)
    timeout_s: float = _default("request_timeout_s")
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], float] = time.monotonic
    workload: Workload = field(default_factory=Workload)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics, limits: Limits) -> Batcher:
        """The service's batcher; its pixel budget is set for the workers' devices when they start
        (:func:`pixel_budget`)."""
        return cls(
            max_batch_size=settings.max_batch_size,
            max_pending=settings.max_pending_requests,
            max_inflight_pixels=int(settings.max_inflight_megapixels * 1_000_000),
            timeout_s=settings.request_timeout_s,
            metrics=metrics,
            workload=Workload(limits.max_sync_work_s, limits.max_job_work_s),
        )

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_pending < 1 or self.pixel_budget < 1:
            raise ValueError("max_batch_size, max_pending and pixel_budget must be at least 1")
        self._cond = threading.Condition()
        self._queue: collections.deque[Any] = collections.deque()
        self._tickets: set[Ticket] = set()
        self._draining = False
        self._inflight_pixels = 0
        self._serving = 0  # worker loops running serve()
        self._turns = 0  # batches started; _served: the turn at which each client last led a batch
        self._served: dict[str, int] = {}

    # -- HTTP side ----------------------------------------------------------------------------
    def admit(self) -> Ticket:
        """A ticket for one request, or :class:`QueueFull` / :class:`Draining` at once."""
        with self._cond:
            if self._draining:
                raise Draining("the service is shutting down")
            if len(self._tickets) >= self.max_pending:
                raise QueueFull(f"{self.max_pending} requests are already in progress")
            ticket = Ticket(self, self.clock() + self.timeout_s)
            self._tickets.add(ticket)
            self.metrics.pending_requests.set(len(self._tickets))
            return ticket

    @property
    def pending(self) -> int:
        return len(self._tickets)

    @property
    def depth(self) -> int:
        return sum(1 for i in self._queue if i is not _STOP)

    def drain(self) -> None:
        """Refuse new requests from now on; admitted ones carry on."""
        with self._cond:
            self._draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every admitted request is done (True) or ``timeout`` passes (False)."""
        end = self.clock() + timeout
        while self._tickets and self.clock() < end:
            await asyncio.sleep(0.02)
        return not self._tickets

    def stop(self, workers: int = 1) -> None:
        """Sentinels that end ``workers`` serve loops once they pick them up (after queued work)."""
        with self._cond:
            self._queue.extend([_STOP] * workers)
            self._cond.notify_all()

    def enqueue(self, ticket: Ticket, key: BatchKey, tensors: Sequence, params: Sequence, last: bool) -> list:
        """Queue ``ticket``'s items (:meth:`Ticket.submit`); their futures, in order."""
        now = self.clock()
        items = [
            Item(concurrent.futures.Future(), t, now, ticket.deadline, key, a, ticket)
            for t, a in zip(tensors, params, strict=True)
        ]
        with self._cond:
            if ticket.cancelled:
                raise (
                    DeadlineExceeded("deadline passed")
                    if ticket.cancelled == "timeout"
                    else Cancelled(ticket.cancelled)
                )
            ticket.final = last
            ticket.queued += len(items)
            ticket._futures.extend(i.future for i in items)
            self._queue.extend(items)
            self.metrics.queue_depth.set(self.depth)
            self._cond.notify_all()
        return [i.future for i in items]

    def reserve(self, ticket: Ticket, pixels: int) -> None:
        """Count ``pixels`` against the in-flight budget for ``ticket`` (:meth:`Ticket.reserve`)."""
        # before the decode: work that even the cheapest operation could not finish in time is refused now
        self.workload.precheck(pixels, is_job=ticket.is_job)
        with self._cond:
            # a lone request is always admitted: its size is bounded by the megapixel limit
            if self._inflight_pixels and self._inflight_pixels + pixels > self.max_inflight_pixels:
                raise QueueFull(f"{self._inflight_pixels / 1e6:.1f} megapixels are already in progress")
            self._inflight_pixels += pixels
            ticket.pixels += pixels

    def release(self, ticket: Ticket) -> None:
        """Free ``ticket``'s slot and pixels (:meth:`Ticket.close`)."""
        with self._cond:
            if ticket in self._tickets:
                self._inflight_pixels -= ticket.pixels
                ticket.pixels = 0
            self._tickets.discard(ticket)
            self.metrics.pending_requests.set(len(self._tickets))
            self._cond.notify_all()

    def purge(self) -> None:
        """Drop cancelled and expired items now (the gauge follows at once, even while workers are busy)."""
        with self._cond:
            self._drop_dead()
            self._cond.notify_all()

    def backlog_seconds(self) -> float:
        """Estimated model time of the queued items, spread over the running workers (0 for unmeasured ops)."""
        with self._cond:
            speed = self.workload.speed
            total = sum(
                speed.seconds(i.key.op, i.key.height * i.key.width) or 0.0 for i in self._queue if i is not _STOP
            )
        return total / max(self._serving, 1)

    def plan(self, ticket: Ticket, op: str, pixels: int, image_pixels: int) -> None:
        """Set ``ticket``'s deadline and estimate from the work it plans (:meth:`Ticket.plan`)."""
        now = self.clock()
        deadline, estimate = self.workload.deadline(
            op,
            pixels,
            self.backlog_seconds(),
            now=now,
            timeout_s=self.timeout_s,
            is_job=ticket.is_job,
            image_pixels=image_pixels,
        )
        ticket.deadline = max(ticket.deadline, deadline)
        ticket.allotted_s = ticket.deadline - now
        ticket.estimate_s = estimate

    # -- worker side --------------------------------------------------------------------------
    def _drop_dead(self) -> None:
        """Answer expired items and discard cancelled ones, before they reach a worker."""
        now = self.clock()
        keep: collections.deque[Any] = collections.deque()
        for item in self._queue:
            if item is _STOP:
                keep.append(item)
            elif item.future.cancelled() or item.ticket.cancelled:
                item.future.cancel()
                item.ticket.queued -= 1
                reason = "timeout" if item.ticket.cancelled == "timeout" else "disconnected"
                self.metrics.dropped_items.labels(reason).inc()
            elif now >= item.deadline:
                item.ticket.queued -= 1
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                self.metrics.dropped_items.labels("timeout").inc()
            else:
                keep.append(item)
        self._queue = keep
        self.metrics.queue_depth.set(self.depth)

    def _expecting(self) -> bool:
        """Whether an admitted request is still preparing work (so waiting may fill the batch)."""
        return any(not t.final and t.queued == 0 and not t.cancelled for t in self._tickets)

    def _head(self) -> Item:
        """The oldest item of the client whose turn it is (the one that led a batch longest ago)."""
        head = None
        for item in self._queue:
            if item is _STOP:
                continue
            if head is None or self._served.get(item.ticket.client, -1) < self._served.get(head.ticket.client, -1):
                head = item
        assert head is not None
        return head

    def _select(self) -> list[Item]:
        head = self._head()
        chosen, pixels = [head], head.key.height * head.key.width
        for item in self._queue:
            if item is _STOP or item is head or item.key != head.key:
                continue
            size = item.key.height * item.key.width
            if chosen and (len(chosen) >= self.max_batch_size or pixels + size > self.pixel_budget):
                break
            chosen.append(item)
            pixels += size
        return chosen

    def next_batch(self) -> Batch | None:
        """Block until a batch is ready; ``None`` once a stop sentinel is reached."""
        with self._cond:
            while True:
                self._drop_dead()
                if not self._queue:
                    self._cond.wait(timeout=0.25)  # wakes periodically to expire deadlines
                    continue
                if self._queue[0] is _STOP:
                    self._queue.popleft()
                    return None
                chosen = self._select()
                head = chosen[0]
                full = len(chosen) >= self.max_batch_size
                wait = head.enqueued_at + self.max_queue_delay - self.clock()
                if not full and wait > 0 and self._expecting():
                    self._cond.wait(timeout=wait)
                    continue
                for item in chosen:
                    self._queue.remove(item)
                    item.ticket.queued -= 1
                self._take_turn(head.ticket.client)
                self.metrics.queue_depth.set(self.depth)
                return Batch(head.key, chosen)

    def _take_turn(self, client: str) -> None:
        self._turns += 1
        self._served[client] = self._turns
        if len(self._served) > 1024:  # forget clients with nothing queued
            queued = {i.ticket.client for i in self._queue if i is not _STOP}
            self._served = {c: t for c, t in self._served.items() if c in queued}

    def serve(self, compute: Compute) -> None:
        """Worker loop: run batches through ``compute`` until stopped. Never raises."""
        with self._cond:
            self._serving += 1
        try:
            while True:
                try:
                    batch = self.next_batch()
                    if batch is None:
                        return
                    self.execute(batch, compute)
                except Exception:  # the loop must outlive any single failure
                    log.exception("batcher loop error; continuing")
        finally:
            with self._cond:
                self._serving -= 1

    def execute(self, batch: Batch, compute: Compute) -> None:
        """Run one batch; failures are isolated by splitting the batch and retrying the halves."""
        now = self.clock()
        live = [i for i in batch.items if i.future.set_running_or_notify_cancel()]
        dropped = len(batch.items) - len(live)
        if dropped:
            self.metrics.dropped_items.labels("disconnected").inc(dropped)
        if not live:
            return
        for item in live:
            self.metrics.queue_wait.observe(now - item.enqueued_at)
        run_isolated(compute, batch.key, live, self.metrics, self.workload.speed)
