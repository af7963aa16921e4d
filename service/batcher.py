"""Dynamic batcher: admission, the work queue, deadlines and failure isolation (after LitServe's loops).

Workers call :meth:`Batcher.serve` with their compute function; clients take turns leading batches of one
:class:`BatchKey`, and a batch that raises is retried in halves so only the items failing alone fail
(docs/service.md, "How requests are batched").
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

from kind_serve.model.parts import join

from .config import Limits, Settings
from .metrics import Metrics
from .problems import Problem
from .tickets import BatchKey, Cancelled, DeadlineExceeded, Draining, Handoff, ItemInput, QueueFull, Ticket
from .workload import SpeedMeter, Workload

log = logging.getLogger(__name__)

_STOP = object()

# a few ms adds little to a model pass of tens of ms, and lets requests arriving together share a batch
MAX_QUEUE_DELAY_S = 0.005
# pixels per batch bound activation memory (docs/performance.md); a CPU gains no throughput from larger batches,
# so its budget is about one networks' tile, which keeps a large photo's peak lower
PIXEL_BUDGET = 3_000_000
CPU_PIXEL_BUDGET = 1_000_000


Compute = Callable[[BatchKey, torch.Tensor, list[Any]], torch.Tensor | Sequence[Any]]


class BatchFailed(Problem):
    """An item failed even when run alone; ``reason`` is ``oom`` (503) or ``inference_error`` (500)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        if reason == "oom":
            detail = "not enough accelerator memory for this image right now; retry later or send a smaller image"
            super().__init__(503, "Service Unavailable", detail, kind="out-of-memory")
        else:
            super().__init__(500, "Internal Server Error", "inference failed for this image", kind="inference-error")


@dataclass(eq=False)
class Item:
    future: concurrent.futures.Future
    tensor: ItemInput
    enqueued_at: float
    deadline: float
    key: BatchKey
    params: Any  # what the compute function takes per item: (light level, span) for the KinD worker
    ticket: Ticket


@dataclass
class Batch:
    key: BatchKey
    items: list[Item]


def stack(inputs: Sequence[ItemInput]) -> torch.Tensor:
    """One batch from its items' inputs, along the batch dim; a tuple's tensors go side by side along the channels
    (:func:`model.parts.join`: float32, each written once)."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    if len(tensors) == len(inputs):
        return torch.cat(tensors)
    return join([t for t in inputs if isinstance(t, tuple)])


def run_isolated(compute: Compute, key: BatchKey, items: list[Item], metrics: Metrics, speed: SpeedMeter) -> None:
    """Run ``items`` as one batch; when it raises, retry it in halves, so only items that fail alone fail."""
    start = time.perf_counter()
    try:
        outputs = compute(key, stack([i.tensor for i in items]), [i.params for i in items])
        if len(outputs) != len(items):
            raise RuntimeError(f"model returned {len(outputs)} outputs for {len(items)} inputs")
    except Exception as exc:
        oom = isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()
        reason = "oom" if oom else "inference_error"
        if len(items) > 1:
            log.warning("batch of %d %s items failed (%s: %s); retrying in halves", len(items), key.op, reason, exc)
            half = len(items) // 2
            run_isolated(compute, key, items[:half], metrics, speed)
            run_isolated(compute, key, items[half:], metrics, speed)
            return
        log.error("%s item failed alone (%s): %s", key.op, reason, exc)
        metrics.fail(reason)
        items[0].future.set_exception(BatchFailed(reason))
        return
    elapsed = time.perf_counter() - start
    metrics.compute.labels(key.op).observe(elapsed)
    speed.observe(key.op, len(items) * key.height * key.width, elapsed)
    metrics.batch_size.observe(len(items))
    for item, out in zip(items, outputs, strict=True):
        item.future.set_result(Handoff(out))


def pixel_budget(devices: Iterable[torch.device]) -> int:
    """The pixels per batch for workers on ``devices``: the GPU budget when one is a GPU."""
    return PIXEL_BUDGET if any(device.type == "cuda" for device in devices) else CPU_PIXEL_BUDGET


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass
class Batcher:
    """Bounded admission plus one queue shared by every worker; the defaults are the Settings defaults."""

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
        """The service's batcher (its pixel budget is set when the workers start: :func:`pixel_budget`)."""
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

    # -- request side (a Ticket's queue) ------------------------------------------------------
    def admit(self) -> Ticket:
        """A ticket for one request, or :class:`QueueFull` / :class:`Draining` at once."""
        with self._cond:
            if self._draining:
                raise Draining
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
        """Queue ``ticket``'s items; their futures, in order."""
        now = self.clock()
        items = [
            Item(concurrent.futures.Future(), t, now, ticket.deadline, key, a, ticket)
            for t, a in zip(tensors, params, strict=True)
        ]
        with self._cond:
            if ticket.cancelled == "timeout":
                raise DeadlineExceeded("deadline passed")
            if ticket.cancelled:
                raise Cancelled
            ticket.final = last
            ticket.queued += len(items)
            ticket._futures.extend(i.future for i in items)
            self._queue.extend(items)
            self.metrics.queue_depth.set(self.depth)
            self._cond.notify_all()
        return [i.future for i in items]

    def reserve(self, ticket: Ticket, pixels: int) -> None:
        """Count ``pixels`` of ``ticket`` against the in-flight budget."""
        # before the decode: work that even the cheapest operation could not finish in time is refused now
        self.workload.precheck(pixels, is_job=ticket.is_job)
        with self._cond:
            # a lone request is always admitted: its size is bounded by the megapixel limit
            if self._inflight_pixels and self._inflight_pixels + pixels > self.max_inflight_pixels:
                raise QueueFull(f"{self._inflight_pixels / 1e6:.1f} megapixels are already in progress")
            self._inflight_pixels += pixels
            ticket.pixels += pixels

    def release(self, ticket: Ticket) -> None:
        """Free ``ticket``'s slot and pixels."""
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
            seconds = self.workload.speed.seconds
            total = sum(seconds(i.key.op, i.key.height * i.key.width) or 0.0 for i in self._queue if i is not _STOP)
        return total / max(self._serving, 1)

    def plan(self, ticket: Ticket, op: str, pixels: int, image_pixels: int) -> None:
        """Set ``ticket``'s deadline and estimate from the work it plans (:meth:`Workload.deadline`)."""
        now = self.clock()
        ahead = self.backlog_seconds()
        deadline, ticket.estimate_s = self.workload.deadline(
            op, pixels, ahead, now=now, timeout_s=self.timeout_s, is_job=ticket.is_job, image_pixels=image_pixels
        )
        ticket.deadline = max(ticket.deadline, deadline)
        ticket.allotted_s = ticket.deadline - now

    # -- worker side --------------------------------------------------------------------------
    def _drop_dead(self) -> None:
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

    def _select(self) -> list[Item]:
        """The oldest item of the client whose turn it is, and the queued items that batch with it."""
        items = [i for i in self._queue if i is not _STOP]
        head = min(items, key=lambda i: self._served.get(i.ticket.client, -1))  # min keeps the first of a tie
        chosen, pixels = [head], head.key.height * head.key.width
        for item in items:
            if item is head or item.key != head.key:
                continue
            size = item.key.height * item.key.width
            if len(chosen) >= self.max_batch_size or pixels + size > self.pixel_budget:
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
                wait = head.enqueued_at + self.max_queue_delay - self.clock()
                # waiting may fill the batch only while an admitted request is still preparing work
                if (
                    len(chosen) < self.max_batch_size
                    and wait > 0
                    and any(not t.final and t.queued == 0 and not t.cancelled for t in self._tickets)
                ):
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
        """Run one batch (:func:`run_isolated`), skipping items cancelled meanwhile."""
        now = self.clock()
        live = [i for i in batch.items if i.future.set_running_or_notify_cancel()]
        if len(live) < len(batch.items):
            self.metrics.dropped_items.labels("disconnected").inc(len(batch.items) - len(live))
        for item in live:
            self.metrics.queue_wait.observe(now - item.enqueued_at)
        if live:
            run_isolated(compute, batch.key, live, self.metrics, self.workload.speed)
