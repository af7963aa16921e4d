"""This replica's job loops: take a job from the queue under a lease, run it, renew the lease, finish it.

Each replica runs ``Limits.job_workers`` loops that take the next job from the queue (:mod:`service.jobqueue`) under a
lease, renewed every third of ``job_lease_s`` while the job runs; a job whose lease lapses (its replica crashed,
was killed or lost Redis) is taken again by another replica, at most ``Limits.job_max_attempts`` times, then ends
``failed`` with the reason. The work is the synchronous route's own function (``routes.jobs.run_work``: the
routes' ``enhance_image`` / ``decompose_image``) on a ticket admitted for the job's client, so the result is the
route's answer byte for byte, and a rerun gives the same bytes. A replica too busy for the job right now (its
admission slots, megapixels, backlog) keeps it ``queued`` and waits ``Retry-After`` in the loop.

A store or queue failure (Redis paused, restarting) is transient: progress writes are skipped, and the result
and terminal record are written again until they land, before the queue entry is acknowledged — so a job is
never left ``running`` by a lost write. ``DELETE`` (:meth:`JobRunner.cancel`) marks a live job cancelled (the
runner drops its work at the next tick) and removes a finished job with its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Response

from .admission import StoreShareFull
from .batcher import Draining, QueueFull, Ticket
from .errors import TYPE_BASE, Problem, as_problem
from .jobqueue import Full, JobQueue, Lease
from .jobs import TERMINAL, cancel_key, read_record, record_key, result_key, write_record
from .payloads import image_key
from .store import SignedStore, Store, StoreUnavailable
from .workload import WorkBacklog

log = logging.getLogger(__name__)

KEEP_HEADERS = (
    "content-type",
    "content-disposition",
    "etag",
    "x-alpha",
    "x-exposure-gain",
    "x-model-version",
    "x-quality",
)
# refusals that mean "not now": the job waits (holding its lease) and tries again
RETRY_KINDS = ("queue-full", "work-backlog", "client-share", "draining", "store-unavailable")

Work = Callable[[Any, Ticket, dict[str, Any], bytes], Coroutine[Any, Any, Response]]
T = TypeVar("T")


def _problem_dict(problem: Problem) -> dict[str, Any]:
    body = {"type": TYPE_BASE + (problem.kind or "internal"), "title": problem.title}
    return {**body, "status": problem.status, "detail": problem.detail, **problem.extra}


class _LeaseLost(Exception):
    """Another replica took the job over (this one lost Redis for longer than the lease)."""


class _CancelledJob(Exception):
    """``DELETE`` cancelled the job."""


@dataclass
class _Running:
    lease: Lease
    store: SignedStore
    record: dict[str, Any]
    written: str = ""
    renewed_at: float = field(default_factory=time.monotonic)


class JobRunner:
    """This replica's job loops: take, run, renew, finish (see the module docstring)."""

    def __init__(
        self,
        state: Any,
        queue: JobQueue,
        work: Work,
        *,
        tick_s: float = 0.25,
        block_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings, limits = state.settings, state.limits
        self.state = state
        self.queue = queue
        self.work = work
        self.workers = limits.job_workers
        self.lease_s = settings.job_lease_s
        self.max_attempts = limits.job_max_attempts
        self.max_jobs = settings.max_jobs
        self.quota = settings.client_quota(settings.max_jobs)
        self.ttl_s = settings.store_ttl_s
        self.retry_after_s = max(limits.retry_after_s, 1)
        self.tick_s = tick_s
        self.block_s = block_s
        self.clock = clock
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._loops: list[asyncio.Task] = []
        self._closing = False

    # -- accepting -------------------------------------------------------------------------------
    async def admit(self, job_id: str, client: str) -> None:
        """Take a job slot for ``client`` (503 when all are taken, 429 past the client's share)."""
        try:
            await self.queue.admit(job_id, client, self.max_jobs, self.quota, self.ttl_s)
        except Full as full:
            retry = {"Retry-After": str(self.retry_after_s)}
            if full.whole:
                detail = f"{self.max_jobs} jobs are already queued or running; retry later"
                raise Problem(503, "Service Unavailable", detail, kind="queue-full", headers=retry) from None
            detail = f"this client already has {self.quota} jobs queued or running, its share of {self.max_jobs}"
            raise Problem(429, "Too Many Requests", detail, kind="client-share", headers=retry) from None

    async def cancel(self, store: Store, job_id: str) -> dict[str, Any] | None:
        """``DELETE``: a live job becomes ``cancelled``; a finished one is removed with its result. None: no job."""
        record = await read_record(store, job_id)
        if record is None:
            return None
        if record["state"] in TERMINAL:
            for key in (result_key(job_id), record_key(job_id), cancel_key(job_id)):
                await store.delete(key)
            return record
        await store.put(cancel_key(job_id), b"1")
        record.update(state="cancelled", finished_at=self.clock(), eta_s=None)
        await write_record(store, record)
        with contextlib.suppress(StoreUnavailable):
            await self.queue.release(job_id, record.get("client", ""))
        return record

    # -- the loops -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loops = [asyncio.create_task(self._loop(), name=f"kind-jobs-{n}") for n in range(self.workers)]

    async def close(self) -> None:
        """Stop taking jobs; running ones are handed back to the queue (another replica takes them at once)."""
        self._closing = True
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops = []
        await self.queue.close()

    async def _loop(self) -> None:
        while True:
            try:
                lease = await self.queue.take(self.consumer, self.lease_s, self.block_s)
            except StoreUnavailable as exc:
                log.warning("job queue unavailable: %s", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception:  # the loop must outlive any single failure
                log.exception("job queue error")
                await asyncio.sleep(1.0)
                continue
            if lease is not None:
                try:
                    await self._process(lease)
                except Exception:
                    log.exception("job %s: unexpected error; its lease will lapse and it runs again", lease.job_id)

    def _store(self, lease: Lease) -> SignedStore:
        admission = self.state.admission
        return self.state.store.scoped(lease.scope, functools.partial(admission.charge_store, lease.client))

    async def _process(self, lease: Lease) -> None:
        store = self._store(lease)
        record = await self._persist(lambda: read_record(store, lease.job_id))
        if record is None or record["state"] in TERMINAL:  # expired, forged, cancelled or finished already
            await self._persist(lambda: self.queue.ack(lease))
            return
        job = _Running(lease, store, record)
        record["attempts"] = record.get("attempts", 0) + 1
        if record["attempts"] > self.max_attempts:
            detail = (
                f"the job was started {self.max_attempts} times and each time its replica stopped before it "
                "finished (crash, kill, or Redis lost for longer than the lease); submit it again"
            )
            await self._finish(job, "failed", Problem(503, "Service Unavailable", detail, kind="job-abandoned"))
            return
        now = self.clock()
        record.update(state="running", started_at=record["started_at"] or now, progress={"done": 0, "total": 0})
        await self._persist(lambda: self._write(job))
        try:
            response = await self._attempt(job)
        except _LeaseLost:
            log.warning("job %s: taken over by another replica; this run stops", lease.job_id)
            return
        except _CancelledJob:
            await self._settle_cancel(job)
            return
        except asyncio.CancelledError:
            await self._hand_back(job)
            raise
        except Exception as exc:
            problem = as_problem(exc, self.retry_after_s)
            if problem is None:
                log.exception("job %s failed", lease.job_id)
                problem = Problem(500, "Internal Server Error", "the job failed", kind="internal")
            await self._finish(job, "failed", problem)
            return
        await self._finish(job, "done", response)

    async def _attempt(self, job: _Running) -> Response:
        """The job's work on a ticket of its client, waiting (not failing) while the replica is too busy."""
        admission = self.state.admission
        work = job.record["work"]
        while True:
            try:
                with admission.admit(job.lease.client) as ticket:
                    ticket.is_job = True
                    data = await job.store.get(image_key(work["source"]))
                    if data is None:
                        detail = "the job's image expired from the store before the job ran; submit it again"
                        raise Problem(404, "Not Found", detail, kind="unknown-image")
                    task = asyncio.create_task(self.work(self.state, ticket, work, data))
                    del data
                    try:
                        await self._follow(job, ticket, task)
                    finally:
                        if not task.done():  # its queued items go when the ticket closes
                            task.cancel()
                            with contextlib.suppress(asyncio.CancelledError, Exception):
                                await task
                    return task.result()
            except (QueueFull, Draining, WorkBacklog, StoreUnavailable, Problem) as exc:
                problem = as_problem(exc, self.retry_after_s)
                assert problem is not None
                if problem.kind not in RETRY_KINDS:
                    raise
                wait = max(float(problem.headers.get("Retry-After", self.retry_after_s)), 1.0)
                log.info("job %s waits %.0f s: %s", job.lease.job_id, wait, problem.detail)
                job.record.update(state="queued", progress={"done": 0, "total": 0}, estimate_s=None, eta_s=None)
                await self._hold(job, wait)

    async def _follow(self, job: _Running, ticket: Ticket, task: asyncio.Task) -> None:
        """Until ``task`` ends: progress and ETA into the record, the lease renewed, a cancel mark obeyed."""
        while not task.done():
            await asyncio.wait({task}, timeout=self.tick_s)
            await self._tick(job)
            done, total = ticket.progress
            eta = ticket.eta()
            if total:
                job.record["state"] = "running"
            job.record.update(
                progress={"done": done, "total": total},
                estimate_s=None if ticket.estimate_s is None else round(ticket.estimate_s, 1),
                eta_s=None if eta is None else round(eta, 1),
            )
            with contextlib.suppress(StoreUnavailable):  # progress is best effort; the terminal write is not
                await self._write(job)

    async def _hold(self, job: _Running, seconds: float) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._write(job)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(min(self.tick_s, end - time.monotonic()))
            await self._tick(job)

    async def _tick(self, job: _Running) -> None:
        """Renew the lease when a third of it has passed; raise when it was lost or the job was cancelled."""
        with contextlib.suppress(StoreUnavailable):
            if await job.store.get(cancel_key(job.lease.job_id)) is not None:
                raise _CancelledJob
        if time.monotonic() - job.renewed_at >= self.lease_s / 3:
            try:
                if not await self.queue.renew(job.lease):
                    raise _LeaseLost
                job.renewed_at = time.monotonic()
            except StoreUnavailable as exc:  # Redis away: keep working; the lease lapses only if it stays away
                log.warning("job %s: lease not renewed: %s", job.lease.job_id, exc)

    # -- endings ---------------------------------------------------------------------------------
    async def _finish(self, job: _Running, state: str, outcome: Response | Problem) -> None:
        """Result, then terminal record (each retried until stored), then the queue entry and the slot."""
        record = job.record
        if isinstance(outcome, Response):
            body = bytes(outcome.body)
            try:
                await self._persist(lambda: job.store.put(result_key(record["id"]), body))
            except StoreShareFull as full:  # past the client's store share the result cannot be kept
                state, outcome = "failed", full
        if isinstance(outcome, Response):
            headers = {k: v for k, v in outcome.headers.items() if k in KEEP_HEADERS}
            total = record["progress"]["total"]
            record.update(result={"status": 200, "headers": headers}, progress={"done": total, "total": total})
            record.update(eta_s=0.0)
        else:
            record.update(error=_problem_dict(outcome), eta_s=None)
        record.update(state=state, finished_at=self.clock())
        await self._persist(lambda: self._write(job))
        await self._persist(lambda: self.queue.ack(job.lease))
        with contextlib.suppress(StoreUnavailable):  # a slot left behind frees itself after the TTL
            await self.queue.release(record["id"], job.lease.client)

    async def _settle_cancel(self, job: _Running) -> None:
        """After a cancel: the record says ``cancelled`` (a progress write may have crossed it), entry done."""
        stored = await self._persist(lambda: read_record(job.store, job.lease.job_id))
        if stored is not None and stored["state"] != "cancelled":
            stored.update(state="cancelled", finished_at=stored["finished_at"] or self.clock(), eta_s=None)
            await self._persist(lambda: write_record(job.store, stored))
        await self._persist(lambda: self.queue.ack(job.lease))

    async def _hand_back(self, job: _Running) -> None:
        """Shutdown: with Redis another replica takes the job at once; alone, it fails with the reason."""
        try:
            if self.queue.backend == "memory":
                detail = "the server shut down before the job finished; submit it again"
                job.record.update(state="failed", finished_at=self.clock(), eta_s=None)
                job.record["error"] = _problem_dict(Problem(503, "Service Unavailable", detail, kind="draining"))
                await asyncio.wait_for(self._write(job), 2.0)
                await self.queue.ack(job.lease)
                await self.queue.release(job.record["id"], job.lease.client)
            else:
                job.record.update(state="queued", progress={"done": 0, "total": 0}, estimate_s=None, eta_s=None)
                await asyncio.wait_for(self._write(job), 2.0)
                await asyncio.wait_for(self.queue.let_go(job.lease, self.lease_s), 2.0)
        except (StoreUnavailable, TimeoutError) as exc:  # the lease lapses instead
            log.warning("job %s not handed back: %s", job.lease.job_id, exc)

    async def _write(self, job: _Running) -> None:
        """Store the record when it changed (a tick without news writes nothing)."""
        text = json.dumps(job.record)
        if text != job.written:
            await job.store.put(record_key(job.record["id"]), text.encode())
            job.written = text

    async def _persist(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` again after each store failure (back-off up to 2 s) until it succeeds or shutdown begins."""
        pause = 0.25
        while True:
            try:
                return await call()
            except StoreUnavailable as exc:
                if self._closing:
                    raise
                log.warning("store unavailable, retrying in %.2f s: %s", pause, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
