"""Asynchronous jobs: ``POST /jobs`` → 202 + ``Location``; poll ``GET /jobs/{id}``; fetch ``/jobs/{id}/result``.

``Prefer: respond-async`` on ``POST /enhance`` or ``POST /decompose`` makes the same job (:class:`PreferAsync`
routes it here). How a job runs, where it lives and how it is cancelled: :mod:`service.jobs`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from ..deps import SettingsDep, StoreDep, read_upload, require_token
from ..errors import Problem
from ..jobs import JobManager, read_record, result_key
from .openapi import IMAGE_BODY, WORK_ERRORS, problems
from .params import ImageIdQuery

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_token)])

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
JobIdPath = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="id from POST /jobs")]


class Progress(BaseModel):
    done: int = Field(description="work items finished: the light-level preview, then the tiles")
    total: int = Field(description="work items planned (0 until the image is decoded)")


class JobStatus(BaseModel):
    """A job's record, as ``GET /jobs/{id}`` answers it."""

    id: str
    op: Literal["enhance", "decompose"]
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    created_at: float = Field(description="Unix time")
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress
    estimate_s: float | None = Field(None, description="estimated model time of the whole job on this server")
    eta_s: float | None = Field(None, description="estimated seconds until done")
    error: dict[str, Any] | None = Field(None, description="the problem details of a failed job")
    links: dict[str, str]


def _public(record: dict[str, Any]) -> dict[str, Any]:
    job_id = record["id"]
    out = {k: v for k, v in record.items() if k != "result"}
    out["links"] = {"self": f"/jobs/{job_id}", "result": f"/jobs/{job_id}/result"}
    return out


def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def _unknown(job_id: str) -> Problem:
    return Problem(404, "Not Found", f"no job {job_id} (never created, or expired)", kind="unknown-job")


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobStatus,
    summary="Start an enhancement or decomposition as a job",
    description=(
        "Takes the same body and query parameters as `POST /enhance` (or `POST /decompose` with `op=decompose`): "
        "`alpha`, `mode`, `format`, `image_id` … Answers 202 at once with `Location: /jobs/{id}`; poll that for "
        "the state, progress (items done / total) and ETA, then `GET /jobs/{id}/result`. A parameter error is "
        "answered at once as the route would. Use it for work longer than a client or proxy will wait for "
        "(large photos on a CPU). `Prefer: respond-async` on `POST /enhance` or `POST /decompose` does the same."
    ),
    openapi_extra=IMAGE_BODY,
    # a job's request that fails at once (parameters, the image itself) is answered as the route would
    responses=problems(404, 406, 412, *WORK_ERRORS),
)
async def create_job(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    op: Annotated[Literal["enhance", "decompose"], Query(description="the route the job runs")] = "enhance",
    image_id: ImageIdQuery = None,
) -> Response:
    jobs = _jobs(request)
    if jobs.active >= settings.max_jobs:
        raise Problem(
            503,
            "Service Unavailable",
            f"{settings.max_jobs} jobs are already queued or running on this server; retry later",
            kind="queue-full",
            headers={"Retry-After": str(max(settings.retry_after_s, 1))},
        )
    body = b"" if image_id is not None else await read_upload(request, settings.max_upload_bytes)
    query = urlencode([(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "op"])
    job = await jobs.submit(store, op, request.scope, query.encode(), body)
    await jobs.settle(job, 0.1)  # a bad parameter or image fails at once: answer it as the route would
    if job.record["state"] == "failed" and job.record["error"]:
        error = job.record["error"]
        if 400 <= int(error.get("status", 500)) < 500:
            return JSONResponse(error, status_code=int(error["status"]), media_type="application/problem+json")
    headers = {"Location": f"/jobs/{job.id}"}
    if "respond-async" in request.headers.get("prefer", ""):
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse(_public(job.record), status_code=202, headers=headers)


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="A job's state, progress and ETA",
    responses=problems(401, 404, 422, 503),
)
async def get_job(job_id: JobIdPath, store: StoreDep) -> dict[str, Any]:
    record = await read_record(store, job_id)
    if record is None:
        raise _unknown(job_id)
    return _public(record)


@router.get(
    "/jobs/{job_id}/result",
    summary="A finished job's result",
    description="The enhanced image or the decomposition zip, with the headers the synchronous route sends. "
    "409 while the job is queued or running (poll `GET /jobs/{id}`), or when it was cancelled; a failed "
    "job answers its own problem.",
    response_class=Response,
    responses={
        200: {"description": "the result", "content": {"image/png": {}, "application/zip": {}}},
        **problems(404, 406, 409, 412, *WORK_ERRORS),  # 409: not done; a failed job answers its own problem
    },
)
async def get_result(job_id: JobIdPath, store: StoreDep) -> Response:
    record = await read_record(store, job_id)
    if record is None:
        raise _unknown(job_id)
    if record["state"] == "failed" and record["error"]:
        error = record["error"]
        return JSONResponse(error, status_code=int(error.get("status", 500)), media_type="application/problem+json")
    if record["state"] != "done":
        raise Problem(
            409,
            "Conflict",
            f"job {job_id} is {record['state']}: "
            + ("poll GET /jobs/{id} until it is done" if record["state"] in ("queued", "running") else "no result"),
            kind="job-not-done",
        )
    data = await store.get(result_key(job_id))
    if data is None:
        raise _unknown(job_id)
    headers = dict(record["result"]["headers"])
    media_type = headers.pop("content-type", "application/octet-stream")
    return Response(data, media_type=media_type, headers=headers)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="Cancel a job (its queued work is dropped)",
    responses=problems(401, 404, 422, 503),
)
async def delete_job(request: Request, job_id: JobIdPath, store: StoreDep) -> dict[str, Any]:
    record = await _jobs(request).cancel(store, job_id)
    if record is None:
        raise _unknown(job_id)
    return _public(record)


class PreferAsync:
    """``POST /enhance`` or ``POST /decompose`` with ``Prefer: respond-async`` (RFC 7240) becomes ``POST /jobs``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in ("/enhance", "/decompose"):
            prefer = b",".join(v for k, v in scope["headers"] if k == b"prefer").decode("latin-1")
            if "respond-async" in prefer.lower():
                op = scope["path"][1:]
                query = scope.get("query_string", b"")
                scope = {
                    **scope,
                    "path": "/jobs",
                    "raw_path": b"/jobs",
                    "query_string": (query + b"&" if query else b"") + f"op={op}".encode(),
                }
        await self.app(scope, receive, send)
