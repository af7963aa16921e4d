"""The request side of the batcher: a :class:`Ticket` per admitted request, the :class:`BatchKey` its work
batches by, and the problems a request meets; it reaches the batcher through :class:`TicketQueue` only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from kind_serve.model import Mode

from .problems import Problem
from .workload import Workload


class QueueFull(Problem):
    """Too many requests or megapixels in flight (503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(503, "Service Unavailable", f"server busy: {reason}; retry later", kind="queue-full")


class Draining(Problem):
    """The service is shutting down and admits no new work (503)."""

    def __init__(self) -> None:
        detail = "the server is shutting down; retry on another replica"
        super().__init__(503, "Service Unavailable", detail, kind="draining")


class DeadlineExceeded(Problem):
    """The request's deadline passed before its work completed (504)."""

    def __init__(self, reason: str) -> None:
        super().__init__(504, "Gateway Timeout", f"request timed out: {reason}", kind="timeout")


class Cancelled(Problem):
    """The request's work was dropped: its client disconnected (499)."""

    def __init__(self) -> None:
        super().__init__(499, "Client Closed Request", "the client disconnected", kind="disconnected")


# an item's input: a 1×C×h×w tensor, or several joined along the channels only when batched (the composition's
# regions of the cached parts and of the adjusted illumination: views until then)
ItemInput = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class BatchKey:
    """Items batch together only when all of these match."""

    op: str  # "alpha", "enhance", "relight", "adjust" or "decompose"
    mode: Mode | None  # None: the op's output serves every mode (the networks' parts)
    height: int
    width: int
    adjust: bool = False  # decompose: also return the adjusted illumination
    scale: int = 1  # adjust: the parts' scale (model.parts.Parts.scale)


class TicketQueue(Protocol):
    """What a ticket needs of the queue that admitted it."""

    workload: Workload
    timeout_s: float

    def clock(self) -> float: ...
    def enqueue(self, ticket: Ticket, key: BatchKey, tensors: Sequence, params: Sequence, last: bool) -> list: ...
    def reserve(self, ticket: Ticket, pixels: int) -> None: ...
    def plan(self, ticket: Ticket, op: str, pixels: int, image_pixels: int) -> None: ...
    def purge(self) -> None: ...
    def release(self, ticket: Ticket) -> None: ...


class Ticket:
    """One admitted request: its deadline and its items. Use as a context manager to release the slot."""

    def __init__(self, queue: TicketQueue, deadline: float) -> None:
        self._queue = queue
        self.deadline = deadline
        self.cancelled: str | None = None
        self.final = False  # set by the last submit: nothing more will come from this request
        self.queued = 0
        self.pixels = 0
        self.is_job = False  # a job's request (service.jobs) may take longer: Workload.max_job_work_s
        self.client = ""  # who sent it, and the admission that charges it (set by service.admission)
        self.admission: Any = None  # the service.admission.Admission (Any: that module imports this one)
        self.estimate_s: float | None = None  # model time the planned work should take (None: nothing measured)
        self.expected = 0  # the end of the planned items, so progress has a total before they are queued
        self.allotted_s = queue.timeout_s
        self._planned: tuple[int, float] | None = None  # (index of the first planned item, when it was planned)
        self._futures: list[concurrent.futures.Future] = []

    def submit(self, key: BatchKey, tensors: Sequence[ItemInput], params: Sequence[Any], *, last: bool) -> list:
        """Queue the items' inputs (1×C×h×w tensors, or tuples of them) and return their concurrent futures."""
        return self._queue.enqueue(self, key, tensors, params, last)

    async def wait(
        self, futures: Sequence[concurrent.futures.Future], each: Callable[[int, Any], None] | None = None
    ) -> list[Any]:
        """Results of ``futures``; :class:`DeadlineExceeded` at the deadline (dropping queued work).

        ``each(i, result)`` takes each result as it arrives, and the list then holds None: a large image's tile
        outputs are never all held at once.
        """
        remaining = self.deadline - self._queue.clock()
        try:
            return await asyncio.wait_for(_collect(futures, each), max(remaining, 0))
        except TimeoutError:
            self.cancel("timeout")
            raise DeadlineExceeded(f"not done within the {self.allotted_s:.0f} s request deadline") from None
        except asyncio.CancelledError:
            if self.cancelled:  # our own futures were cancelled, not this task
                raise Cancelled from None
            raise

    def precheck(self, pixels: int) -> None:
        """Refuse ``pixels`` (from a header) when even the cheapest operation could not finish them in time."""
        self._queue.workload.precheck(pixels, is_job=self.is_job)

    def reserve(self, pixels: int) -> None:
        """Count this request's image against the in-flight pixel budget (:class:`QueueFull` when over)."""
        self._queue.reserve(self, pixels)

    def plan(self, op: str, pixels: int, items: int, image_pixels: int) -> None:
        """Admit ``items`` items of ``op`` (``pixels`` padded pixels) by their estimated time; sets the deadline.

        A later stage (the composition after the networks) extends the planned items, so the ETA keeps the pace
        of the items already done."""
        self._queue.plan(self, op, pixels, image_pixels)
        if self._planned is None:
            self._planned = (len(self._futures), self._queue.clock())
        self.expected = len(self._futures) + items

    def eta(self) -> float | None:
        """Seconds until the planned items are done: from their pace once some are, else from the estimate."""
        if self._planned is None:
            return None
        first, planned_at = self._planned
        done = sum(1 for f in self._futures[first:] if f.done() and not f.cancelled())
        elapsed = self._queue.clock() - planned_at
        if done:
            return elapsed / done * (self.expected - first - done)
        return None if self.estimate_s is None else max(self.estimate_s - elapsed, 0.0)

    @property
    def progress(self) -> tuple[int, int]:
        """(items done, items planned or queued)."""
        done = sum(1 for f in self._futures if f.done() and not f.cancelled())
        return done, max(self.expected, len(self._futures))

    def cancel(self, reason: str) -> None:
        """Drop this request's queued work (client gone, deadline passed)."""
        if self.cancelled is None:
            self.cancelled = reason
        for fut in self._futures:
            fut.cancel()  # running ones finish; queued ones are skipped by the workers
        self._queue.purge()

    def close(self) -> None:
        """Release the admission slot; work still queued for this request is dropped."""
        if any(not f.done() for f in self._futures):
            self.cancel("closed")
        self._queue.release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Handoff:
    """An item's output, taken once by its waiter: a future keeps its result as long as it lives, and a large
    image's futures live until its last tile is in."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def take(self) -> Any:
        value, self.value = self.value, None
        return value


async def _collect(futures: Sequence[concurrent.futures.Future], each: Callable[[int, Any], None] | None) -> list[Any]:
    waiting = [asyncio.wrap_future(f) for f in futures]
    if each is None:
        return [handoff.take() for handoff in await asyncio.gather(*waiting)]
    index = {w: i for i, w in enumerate(waiting)}
    pending: set[asyncio.Future] = set(waiting)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                each(index[future], future.result().take())
    except asyncio.CancelledError:  # as gather does: the work still queued goes with the waiter
        for future in pending:
            future.cancel()
        raise
    return [None] * len(waiting)
