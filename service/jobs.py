"""Asynchronous jobs: accepted at once (202), run by any replica from the job queue, followed by polling.

``POST /jobs`` (or ``Prefer: respond-async``) checks the parameters as the route would, takes a job slot
(``max_jobs`` in all, ``client_share`` of them per client: :meth:`~service.jobqueue.JobQueue.admit`), keeps the
upload in the image store (``img:<sha256>``, the client's scope), writes the record ``job:{id}`` and queues the
job (:func:`submit_job`). Any replica's :class:`~service.jobrunner.JobRunner` takes it from the queue and runs
it. The record (state, progress, ETA, attempts, the result's headers) and the result live in the image store
with its TTL — in Redis when configured, so every replica answers for every job. States: queued → running →
done | failed | cancelled; every terminal record has ``finished_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from . import imaging
from .admission import client_key
from .auth import check_token
from .deps import get_store, read_upload
from .errors import Problem
from .payloads import content_id, image_key
from .store import Store, StoreUnavailable

TERMINAL = ("done", "failed", "cancelled")
INTERNAL = ("result", "work", "client")  # record fields the API does not show


def record_key(job_id: str) -> str:
    return f"job:{job_id}"


def result_key(job_id: str) -> str:
    return f"job:{job_id}:result"


def cancel_key(job_id: str) -> str:
    return f"job:{job_id}:cancel"


def public(record: dict[str, Any]) -> dict[str, Any]:
    job_id = record["id"]
    out = {k: v for k, v in record.items() if k not in INTERNAL}
    out["links"] = {"self": f"/jobs/{job_id}", "result": f"/jobs/{job_id}/result"}
    return out


async def read_record(store: Store, job_id: str) -> dict[str, Any] | None:
    data = await store.get(record_key(job_id))
    return None if data is None else json.loads(data)


async def write_record(store: Store, record: dict[str, Any]) -> None:
    await store.put(record_key(record["id"]), json.dumps(record).encode())


def prefers_async(request: Request) -> bool:
    """``Prefer: respond-async`` (RFC 7240) on the request."""
    return "respond-async" in ",".join(request.headers.getlist("prefer")).lower()


async def submit_job(request: Request, op: str, work: dict[str, Any], image_id: str | None) -> Response:
    """Accept a job (see the module docstring): 202 with its record and ``Location``, or the route's own error."""
    state = request.app.state
    settings = state.settings
    store = get_store(request)
    scope = getattr(request.state, "client_scope", None) or check_token(request, settings)
    client = client_key(request.scope, settings)
    data = b""
    if image_id is None:
        data = await read_upload(request, settings.max_upload_bytes)
        if not data:
            raise Problem(422, "Empty image", "the request carried no image data", kind="bad-image")
        if imaging.sniff(data) is None:
            formats = ", ".join(imaging.DECODERS)
            detail = f"the data is not an image in a supported format ({formats})"
            raise Problem(415, "Unsupported image type", detail, kind="unsupported-image")
        source = await asyncio.to_thread(content_id, data)
    elif await store.get(image_key(image_id)) is None:
        detail = f"no stored image {image_id}: upload it with POST /images first"
        raise Problem(404, "Not Found", detail, kind="unknown-image")
    else:
        source = image_id
    runner = state.jobs  # the service.jobrunner.JobRunner, which imports this module
    job_id = uuid.uuid4().hex
    await runner.admit(job_id, client)  # before storing anything: a refused job leaves nothing behind
    now = time.time()
    record = {
        "id": job_id,
        "op": op,
        "state": "queued",
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "attempts": 0,
        "progress": {"done": 0, "total": 0},
        "estimate_s": None,
        "eta_s": None,
        "error": None,
        "result": None,
        "work": {**work, "op": op, "source": source, "image_id": image_id},
        "client": client,
    }
    try:
        if data:
            await store.put(image_key(source), data)
            del data
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
