"""Asynchronous jobs: long model work accepted at once (202) and followed by polling.

A job is an ordinary ``POST /enhance`` or ``POST /decompose`` request that the server sends to itself, through
the same ASGI app, while the client polls: validation, the model work and the answer are exactly the
synchronous route's, byte for byte. The job's request waits for an admission slot like any other (a full
queue keeps the job ``queued`` and retries), may take up to ``max_job_work_s`` of estimated model time
instead of ``max_sync_work_s`` (:mod:`service.workload`), and reports its progress (items done / planned:
the light-level preview and the tiles) through its batcher ticket.

The record (state, progress, ETA, the result's headers) and the result live in the image store under
``job:{id}``, with the store's TTL — in Redis when configured, so every replica answers for every job. The
work runs on the replica that accepted it; ``DELETE`` sent to another replica reaches it through a cancel
mark in the store, read at every progress tick. States: queued → running → done | failed | cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Scope

from .admission import StoreShareFull
from .errors import TYPE_BASE
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

TERMINAL = ("done", "failed", "cancelled")
RETRY_KINDS = ("queue-full", "work-backlog", "client-share")  # the job waits and tries again


def record_key(job_id: str) -> str:
    return f"job:{job_id}"


def result_key(job_id: str) -> str:
    return f"job:{job_id}:result"


def cancel_key(job_id: str) -> str:
    return f"job:{job_id}:cancel"


@dataclass
class Reply:
    """What the app answered a job's request."""

    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        try:
            return json.loads(self.body)
        except ValueError:
            return {"status": self.status, "detail": self.body[:200].decode("utf-8", "replace")}


async def call_app(app: ASGIApp, scope: Scope, body: bytes) -> Reply:
    """One HTTP request through ``app`` in this process (no socket): its status, headers and body."""
    delivered = False
    never = asyncio.Event()

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the caller never disconnects; cancelling the task ends the request
        return {"type": "http.disconnect"}

    status, headers, chunks = 500, {}, []

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return Reply(status, headers, b"".join(chunks))


def request_scope(template: Scope, path: str, query: bytes, body: bytes, job_id: str) -> Scope:
    """The scope of a job's request: the submitting request's client and headers, a raw body, the job's id."""
    drop = {b"prefer", b"content-length", b"content-type", b"transfer-encoding", b"x-request-id", b"expect"}
    drop.add(b"if-none-match")  # a job always computes its result (a 304 would leave nothing to fetch)
    headers = [(k, v) for k, v in template.get("headers", []) if k.lower() not in drop]
    headers += [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", job_id.encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": template.get("http_version", "1.1"),
        "method": "POST",
        "scheme": template.get("scheme", "http"),
        "server": template.get("server"),
        "client": template.get("client"),
        "root_path": template.get("root_path", ""),
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers,
        "state": {"job_id": job_id},
    }


@dataclass
class Job:
    """A job running on this replica."""

    id: str
    op: str
    store: Store
    record: dict[str, Any]
    scope: Scope
    body: bytes
    task: asyncio.Task | None = None
    running_since: float | None = None
    last_written: dict[str, Any] = field(default_factory=dict)


class JobManager:
    """Starts, follows and cancels the jobs of one app instance (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, max_jobs: int, tick_s: float = 0.25, clock: Callable[[], float] = time.time
    ) -> None:
        self.app = app
        self.max_jobs = max_jobs
        self.tick_s = tick_s
        self.clock = clock
        self._jobs: dict[str, Job] = {}

    @property
    def active(self) -> int:
        return len(self._jobs)

    async def submit(self, store: Store, op: str, template: Scope, query: bytes, body: bytes) -> Job:
        """Record a new job and start it; the caller answers 202 (or the job's own early error, see ``settle``)."""
        job_id = uuid.uuid4().hex
        now = self.clock()
        record = {
            "id": job_id,
            "op": op,
            "state": "queued",
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "progress": {"done": 0, "total": 0},
            "estimate_s": None,
            "eta_s": None,
            "error": None,
            "result": None,
        }
        scope = request_scope(template, f"/{op}", query, body, job_id)
        job = Job(job_id, op, store, record, scope, body)
        await self._write(job)
        self._jobs[job_id] = job
        job.task = asyncio.create_task(self._run(job), name=f"kind-job-{job_id}")
        return job

    async def settle(self, job: Job, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the job to end (a bad parameter fails within milliseconds)."""
        if job.task is not None:
            await asyncio.wait({job.task}, timeout=timeout_s)

    async def cancel(self, store: Store, job_id: str) -> dict[str, Any] | None:
        """Cancel a job (here or, through the store, on the replica running it); the record, None if unknown."""
        record = await read_record(store, job_id)
        if record is None:
            return None
        if record["state"] in TERMINAL and record["state"] != "done":
            return record
        await store.put(cancel_key(job_id), b"1")
        record.update(state="cancelled", finished_at=self.clock(), eta_s=None, result=None)
        await store.put(record_key(job_id), json.dumps(record).encode())
        job = self._jobs.get(job_id)
        if job is not None and job.task is not None:
            job.task.cancel()
        return record

    async def close(self) -> None:
        """Stop every job of this replica (shutdown): they end as failed, with the reason."""
        jobs = list(self._jobs.values())
        for job in jobs:
            if job.task is not None:
                job.task.cancel()
        for job in jobs:
            if job.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job.task

    # -- the job's life ---------------------------------------------------------------------------------
    async def _run(self, job: Job) -> None:
        try:
            reply = await self._attempts(job)
            await self._finish(job, reply)
        except asyncio.CancelledError:
            if not await self._cancelled(job):
                detail = "the server shut down before the job finished; submit it again"
                job.record.update(state="failed", error={"status": 503, "detail": detail})
                job.record["finished_at"] = self.clock()
                with contextlib.suppress(Exception):
                    await self._write(job)
        except Exception:  # a job must never take the server down; its record says it failed
            log.exception("job %s failed", job.id)
            job.record.update(state="failed", error={"status": 500, "detail": "the job failed"})
            with contextlib.suppress(Exception):
                await self._write(job)
        finally:
            self._jobs.pop(job.id, None)

    async def _attempts(self, job: Job) -> Reply:
        """Run the request, waiting and retrying while the server is too busy to admit it."""
        while True:
            job.scope["state"] = {"job_id": job.id}
            task = asyncio.create_task(call_app(self.app, dict(job.scope), job.body))
            try:
                while not task.done():
                    await asyncio.wait({task}, timeout=self.tick_s)
                    await self._tick(job)
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            reply = task.result()
            kind = str(reply.problem().get("type", "")).rsplit("/", 1)[-1] if reply.status >= 400 else ""
            if reply.status in (429, 503) and kind in RETRY_KINDS:
                job.record.update(state="queued", progress={"done": 0, "total": 0})
                job.running_since = None
                await self._write(job)
                await asyncio.sleep(max(1.0, float(reply.headers.get("retry-after", "1") or 1)))
                continue
            return reply

    async def _tick(self, job: Job) -> None:
        if await self._cancelled(job):
            raise asyncio.CancelledError
        ticket = job.scope["state"].get("ticket")
        if ticket is None:
            return
        now = self.clock()
        if job.running_since is None:
            job.running_since = now
            job.record.update(state="running", started_at=job.record["started_at"] or now)
        done, total = ticket.progress
        eta = ticket.eta()
        job.record.update(
            progress={"done": done, "total": total},
            estimate_s=None if ticket.estimate_s is None else round(ticket.estimate_s, 1),
            eta_s=None if eta is None else round(eta, 1),
        )
        await self._write(job)

    async def _finish(self, job: Job, reply: Reply) -> None:
        if await self._cancelled(job):
            return
        now = self.clock()
        if reply.status == 200:
            try:  # charged to the submitting client: past its store share the result cannot be kept
                await job.store.put(result_key(job.id), reply.body)
            except StoreShareFull as full:
                reply = Reply(full.status, full.headers, json.dumps(_problem(full)).encode())
        if reply.status == 200:
            keep = ("content-type", "content-disposition", "etag", "x-alpha", "x-exposure-gain", "x-model-version")
            total = job.record["progress"]["total"]
            job.record.update(
                state="done",
                progress={"done": total, "total": total},
                eta_s=0.0,
                result={"status": 200, "headers": {k: v for k, v in reply.headers.items() if k in keep}},
            )
        else:
            job.record.update(state="failed", eta_s=None, error=reply.problem())
        job.record["finished_at"] = now
        await self._write(job)

    async def _cancelled(self, job: Job) -> bool:
        try:
            return await job.store.get(cancel_key(job.id)) is not None
        except StoreUnavailable:
            return False

    async def _write(self, job: Job) -> None:
        """Store the record when it changed (a tick without news writes nothing)."""
        if job.record == job.last_written:
            return
        await job.store.put(record_key(job.id), json.dumps(job.record).encode())
        job.last_written = json.loads(json.dumps(job.record))


def _problem(full: StoreShareFull) -> dict[str, Any]:
    return {"type": TYPE_BASE + str(full.kind), "title": full.title, "status": full.status, "detail": full.detail}


async def read_record(store: Store, job_id: str) -> dict[str, Any] | None:
    data = await store.get(record_key(job_id))
    return None if data is None else json.loads(data)
