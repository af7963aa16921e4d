"""Asynchronous jobs: accepted at once (202), run by any replica from the job queue, followed by polling.

Each replica's :class:`JobRunner` runs a job under a renewed lease with the synchronous route's own function,
so its result is that route's answer byte for byte (docs/service.md, "Jobs").

A job's terminal record (done, failed, cancelled) is written once, to a key of its own that a running
attempt's progress writes never touch and that reads prefer: an attempt that lost its lease, or a cancelled
one, may write progress for up to a tick before it notices, and that write must not hide how the job ended.
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

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from . import imaging, payloads
from .admission import StoreShareFull, client_key
from .auth import check_token
from .batcher import Ticket
from .deps import get_store
from .errors import as_problem
from .problems import Problem
from .store import JobQueue, Lease, SignedStore, StoreUnavailable

log = logging.getLogger(__name__)

TERMINAL = ("done", "failed", "cancelled")
INTERNAL = ("result", "work", "client")  # record fields the API does not show
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


def record_key(job_id: str) -> str:
    return f"job:{job_id}"


def result_key(job_id: str) -> str:
    return f"job:{job_id}:result"


def final_key(job_id: str) -> str:
    return f"job:{job_id}:final"


def public(record: dict[str, Any]) -> dict[str, Any]:
    job_id = record["id"]
    out = {k: v for k, v in record.items() if k not in INTERNAL}
    return {**out, "links": {"self": f"/jobs/{job_id}", "result": f"/jobs/{job_id}/result"}}


async def read_record(store: SignedStore, job_id: str) -> dict[str, Any] | None:
    """The job's terminal record when it has one, else its live record; None for no job (or a deleted one)."""
    data = await store.get(final_key(job_id)) or await store.get(record_key(job_id))
    record = None if data is None else json.loads(data)
    return None if record is None or record.get("deleted") else record


async def write_final(store: SignedStore, record: dict[str, Any]) -> dict[str, Any]:
    """Store ``record`` as the job's terminal record unless it has one already: the one that counts."""
    if await store.put(final_key(record["id"]), json.dumps(record).encode(), new=True):
        return record
    return await read_record(store, record["id"]) or record


async def write_record(store: SignedStore, record: dict[str, Any]) -> None:
    await store.put(record_key(record["id"]), json.dumps(record).encode())


def prefers_async(request: Request) -> bool:
    """``Prefer: respond-async`` (RFC 7240) on the request."""
    return "respond-async" in ",".join(request.headers.getlist("prefer")).lower()


def _idle(record: dict[str, Any], state: str, **more: Any) -> None:
    """``record`` in ``state`` with no work under way: no progress, no estimate."""
    record.update(state=state, progress={"done": 0, "total": 0}, estimate_s=None, eta_s=None, **more)


async def submit_job(request: Request, op: str, work: dict[str, Any], image_id: str | None) -> Response:
    """Accept a job: 202 with its record and ``Location``, or the route's own error."""
    runner: JobRunner = request.app.state.jobs
    settings, store = runner.settings, get_store(request)
    scope, client = check_token(request, settings), client_key(request.scope, settings)
    data = await payloads.source_bytes(request, image_id, store, settings)
    if image_id is None:
        imaging.check_type(data)
        source = await asyncio.to_thread(payloads.content_id, data)
    else:
        data, source = b"", image_id  # stored already
    job_id = uuid.uuid4().hex
    await runner.admit(job_id, client)  # before storing anything: a refused job leaves nothing behind
    record = {"id": job_id, "op": op, "created_at": time.time(), "started_at": None, "finished_at": None}
    record.update(attempts=0, error=None, result=None, client=client)
    _idle(record, "queued", work={**work, "op": op, "source": source, "image_id": image_id})
    try:
        if data:
            await store.put(payloads.image_key(source), data)
        await write_record(store, record)
        await runner.queue.push(job_id, scope, client)
    except BaseException:
        with contextlib.suppress(StoreUnavailable):
            await runner.queue.release(job_id, client)
        raise
    headers = {"Location": f"/jobs/{job_id}"}
    if prefers_async(request):
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse(public(record), status_code=202, headers=headers)


class _LeaseLost(Exception):
    """Another replica took the job over (this one lost Redis for longer than the lease)."""


class _Ended(Exception):
    """The job has a terminal record already: ``DELETE`` cancelled it, or another attempt finished it."""


@dataclass
class _Running:
    lease: Lease
    store: SignedStore
    record: dict[str, Any]
    written: str = ""
    renewed_at: float = field(default_factory=time.monotonic)


class JobRunner:
    """This replica's job loops: take, run, renew, finish (see the module docstring)."""

    tick_s = 0.25  # how often a running job writes its progress and checks its lease and its end key
    block_s = 1.0  # how long a loop waits on the queue for a new entry

    def __init__(self, state: Any, queue: JobQueue, work: Work) -> None:
        self.state, self.queue, self.work = state, queue, work
        self.settings, self.limits = state.settings, state.limits
        self.lease_s = self.settings.job_lease_s
        self.quota = self.settings.client_quota(self.settings.max_jobs)
        self.retry_after_s = max(self.limits.retry_after_s, 1)
        self._loops: list[asyncio.Task] = []
        self._closing = False

    async def admit(self, job_id: str, client: str) -> None:
        """Take a job slot for ``client`` (503 when all are taken, 429 past the client's share)."""
        max_jobs = self.settings.max_jobs
        refused = await self.queue.admit(job_id, client, max_jobs, self.quota, self.settings.store_ttl_s)
        retry = {"Retry-After": str(self.retry_after_s)}
        if refused == "all":
            detail = f"{max_jobs} jobs are already queued or running; retry later"
            raise Problem(503, "Service Unavailable", detail, kind="queue-full", headers=retry)
        if refused == "client":
            detail = f"this client already has {self.quota} jobs queued or running, its share of {max_jobs}"
            raise Problem(429, "Too Many Requests", detail, kind="client-share", headers=retry)

    async def cancel(self, store: SignedStore, record: dict[str, Any]) -> dict[str, Any]:
        """``DELETE``: a live job becomes ``cancelled``; a finished one is removed with its result."""
        job_id = record["id"]
        if record["state"] in TERMINAL:
            # a tombstone, not nothing, under the final key: an attempt still running somewhere stops at its next
            # tick instead of writing its progress back under the id
            await store.put(final_key(job_id), json.dumps({"id": job_id, "deleted": True}).encode())
            for key in (result_key(job_id), record_key(job_id)):
                await store.delete(key)
            return record
        record.update(state="cancelled", finished_at=time.time(), eta_s=None)
        record = await write_final(store, record)  # the running attempt sees it at its next tick
        if record["state"] == "cancelled":
            with contextlib.suppress(StoreUnavailable):
                await self.queue.release(job_id, record.get("client", ""))
        return record

    def start(self) -> None:
        workers = range(self.limits.job_workers)
        self._loops = [asyncio.create_task(self._loop(), name=f"kind-jobs-{n}") for n in workers]

    @staticmethod
    def _consumer() -> str:
        """A queue consumer name per loop, ``<host>-<pid>-<random>``: a lease held by one loop is not another's."""
        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    async def close(self) -> None:
        """Stop taking jobs; running ones are handed back to the queue (another replica takes them at once)."""
        self._closing = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        await self.queue.close()

    async def _loop(self) -> None:
        consumer = self._consumer()
        while True:
            try:
                lease = await self.queue.take(consumer, self.lease_s, self.block_s)
            except Exception as exc:  # the loop must outlive any single failure
                log.warning("job queue error: %s", exc, exc_info=not isinstance(exc, StoreUnavailable))
                await asyncio.sleep(1.0)
                continue
            if lease is not None:
                try:
                    await self._process(lease)
                except Exception:
                    log.exception("job %s: unexpected error; its lease will lapse and it runs again", lease.job_id)

    async def _process(self, lease: Lease) -> None:
        charge = functools.partial(self.state.admission.charge_store, lease.client)
        store = self.state.store.scoped(lease.scope, charge)
        record = await self._persist(lambda: read_record(store, lease.job_id))
        if record is None or record["state"] in TERMINAL:  # expired, forged, cancelled or finished already
            await self._persist(lambda: self.queue.ack(lease))
            return
        job = _Running(lease, store, record)
        record["attempts"] += 1
        if record["attempts"] > self.limits.job_max_attempts:
            detail = (
                f"the job was started {self.limits.job_max_attempts} times and each time its replica stopped before "
                "it finished (crash, kill, or Redis lost for longer than the lease); submit it again"
            )
            await self._finish(job, "failed", Problem(503, "Service Unavailable", detail, kind="job-abandoned"))
            return
        _idle(record, "running", started_at=record["started_at"] or time.time())
        await self._persist(lambda: self._write(job))
        try:
            response = await self._attempt(job)
        except _LeaseLost:
            log.warning("job %s: taken over by another replica; this run stops", lease.job_id)
        except _Ended:
            await self._persist(lambda: self.queue.ack(lease))
        except asyncio.CancelledError:
            await self._hand_back(job)
            raise
        except Exception as exc:
            problem = as_problem(exc)
            if problem is None:
                log.exception("job %s failed", lease.job_id)
                problem = Problem(500, "Internal Server Error", "the job failed", kind="internal")
            await self._finish(job, "failed", problem)
        else:
            await self._finish(job, "done", response)

    async def _attempt(self, job: _Running) -> Response:
        """The job's work on a ticket of its client, waiting (not failing) while the replica is too busy."""
        work = job.record["work"]
        while True:
            try:
                with self.state.admission.admit(job.lease.client) as ticket:
                    ticket.is_job = True
                    data = await job.store.get(payloads.image_key(work["source"]))
                    if data is None:
                        detail = "the job's image expired from the store before the job ran; submit it again"
                        raise Problem(404, "Not Found", detail, kind="unknown-image")
                    task = asyncio.create_task(self.work(self.state, ticket, work, data))
                    del data
                    await self._follow(job, task, ticket)
                    return task.result()
            except Exception as exc:
                problem = as_problem(exc)
                if problem is None or problem.kind not in RETRY_KINDS:
                    raise
                wait = max(float(problem.headers.get("Retry-After", self.retry_after_s)), 1.0)
                log.info("job %s waits %.0f s: %s", job.lease.job_id, wait, problem.detail)
                _idle(job.record, "queued")
                await self._follow(job, asyncio.create_task(asyncio.sleep(wait)))

    async def _follow(self, job: _Running, task: asyncio.Task, ticket: Ticket | None = None) -> None:
        """Until ``task`` ends: the lease renewed, an end elsewhere obeyed, the ticket's progress and ETA recorded."""
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.tick_s)
                await self._tick(job)
                if ticket is not None:
                    done, total = ticket.progress
                    eta, estimate = ticket.eta(), ticket.estimate_s
                    if total:
                        job.record["state"] = "running"
                    job.record.update(
                        progress={"done": done, "total": total},
                        estimate_s=None if estimate is None else round(estimate, 1),
                        eta_s=None if eta is None else round(eta, 1),
                    )
                with contextlib.suppress(StoreUnavailable):  # progress is best effort; the terminal write is not
                    await self._write(job)
        finally:
            task.cancel()  # when still running: a job's queued items go when its ticket closes
            await asyncio.gather(task, return_exceptions=True)

    async def _tick(self, job: _Running) -> None:
        """Renew the lease when a third of it has passed; raise when it was lost or the job has ended."""
        with contextlib.suppress(StoreUnavailable):
            if await job.store.get(final_key(job.lease.job_id)) is not None:
                raise _Ended
        if time.monotonic() - job.renewed_at >= self.lease_s / 3:
            try:
                if not await self.queue.renew(job.lease):
                    raise _LeaseLost
                job.renewed_at = time.monotonic()
            except StoreUnavailable as exc:  # Redis away: keep working; the lease lapses only if it stays away
                log.warning("job %s: lease not renewed: %s", job.lease.job_id, exc)

    async def _finish(self, job: _Running, state: str, outcome: Response | Problem) -> None:
        """Result, then terminal record (each retried until stored), then the queue entry and the slot."""
        record = job.record
        if isinstance(outcome, Response):
            body = bytes(outcome.body)
            try:
                await self._persist(lambda: job.store.put(result_key(record["id"]), body))
                headers = {k: v for k, v in outcome.headers.items() if k in KEEP_HEADERS}
                total = record["progress"]["total"]
                done = {"done": total, "total": total}
                record.update(result={"status": 200, "headers": headers}, progress=done, eta_s=0.0)
            except StoreShareFull as full:  # past the client's store share the result cannot be kept
                state, outcome = "failed", full
        if isinstance(outcome, Problem):
            record.update(error=outcome.body(), eta_s=None)
        record.update(state=state, finished_at=time.time())
        await self._persist(lambda: write_final(job.store, record))
        with contextlib.suppress(StoreUnavailable):  # the live record is superseded; it expires otherwise
            await job.store.delete(record_key(record["id"]))
        await self._persist(lambda: self.queue.ack(job.lease))
        with contextlib.suppress(StoreUnavailable):  # a slot left behind frees itself after the TTL
            await self.queue.release(record["id"], job.lease.client)

    async def _hand_back(self, job: _Running) -> None:
        """Shutdown: with Redis another replica takes the job at once; alone, it fails with the reason."""
        try:
            if self.queue.backend == "memory":
                detail = "the server shut down before the job finished; submit it again"
                await self._finish(job, "failed", Problem(503, "Service Unavailable", detail, kind="draining"))
            else:
                _idle(job.record, "queued")
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
