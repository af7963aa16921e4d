"""``POST /jobs`` → 202 + ``Location``; poll ``GET /jobs/{id}``; fetch ``/jobs/{id}/result``; ``DELETE`` cancels.

Queueing and running: :mod:`service.jobs`; :func:`run_work` is what a job runs, the synchronous route's own function.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from kind_serve.model import LightLevel

from .. import imaging
from ..batcher import Ticket
from ..deps import Engine, StoreDep, require_token
from ..jobs import public, read_record, result_key, submit_job
from ..problems import Problem
from ..store import SignedStore
from .decompose import decompose_image, zip_response
from .enhance import Enhancement, enhance_image, etag_of
from .params import IMAGE_BODY, WORK_ERRORS, ImageIdQuery, ModeDep, OptionalAlphaText, QualityQuery, problems

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_token)])

JOB_ID = re.compile(r"[0-9a-f]{32}")
JobIdPath = Annotated[str, Path(description="id from POST /jobs", max_length=256)]


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
    attempts: int = Field(0, description="times a replica started the job (more than 1: a replica stopped mid-job)")
    error: dict[str, Any] | None = Field(None, description="the problem details of a failed job")
    links: dict[str, str]


def _unknown(job_id: str) -> Problem:
    return Problem(404, "Not Found", f"no job {job_id[:64]} (never created, expired or deleted)", kind="unknown-job")


async def _record(store: SignedStore, job_id: str) -> dict[str, Any]:
    """The job's record; 404 for anything that is not a live job's id."""
    record = await read_record(store, job_id) if JOB_ID.fullmatch(job_id) else None
    if record is None:
        raise _unknown(job_id)
    return record


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
    mode: ModeDep,
    op: Annotated[Literal["enhance", "decompose"], Query(description="the route the job runs")] = "enhance",
    alpha: OptionalAlphaText = None,
    format: Annotated[
        Literal["png", "jpeg", "jpg", "webp"] | None, Query(description="output format of op=enhance")
    ] = None,
    strip_metadata: Annotated[bool, Query(description="as POST /enhance")] = False,
    image_id: ImageIdQuery = None,
    quality: QualityQuery = "full",
) -> Response:
    if op == "enhance":
        fmt = imaging.negotiate(format, request.headers.get("accept"))
        work = Enhancement(LightLevel.parse(alpha or "auto"), mode, fmt, strip_metadata, None, quality).work()
    else:
        work = {"alpha": None if alpha is None else str(LightLevel.parse(alpha)), "mode": mode}
    return await submit_job(request, op, work, image_id)


async def run_work(state: Any, ticket: Ticket, work: dict[str, Any], data: bytes) -> Response:
    """A job's work: the synchronous route's function on the job's image, with the job's parameters."""
    image_id, engine = work["image_id"], Engine.of(state)
    if work["op"] == "enhance":
        want = Enhancement.from_work(work)
        etag = await etag_of(data, image_id, want, engine.served.revision)
        return await enhance_image(ticket, data, image_id, want, etag, engine)
    level = None if work["alpha"] is None else LightLevel.parse(work["alpha"])
    blob, source = await decompose_image(ticket, data, image_id, level, work["mode"], engine)
    return zip_response(blob, source)


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="A job's state, progress and ETA",
    responses=problems(401, 404, 422, 503),
)
async def get_job(job_id: JobIdPath, store: StoreDep) -> dict[str, Any]:
    return public(await _record(store, job_id))


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
    record = await _record(store, job_id)
    state, error = record["state"], record["error"]
    if state == "failed" and error:
        return JSONResponse(error, status_code=int(error.get("status", 500)), media_type="application/problem+json")
    if state != "done":
        hint = "poll GET /jobs/{id} until it is done" if state in ("queued", "running") else "no result"
        raise Problem(409, "Conflict", f"job {job_id} is {state}: {hint}", kind="job-not-done")
    data = await store.get(result_key(job_id))
    if data is None:
        raise _unknown(job_id)
    headers = dict(record["result"]["headers"])
    media_type = headers.pop("content-type", "application/octet-stream")
    return Response(data, media_type=media_type, headers=headers)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="Cancel a job, or delete a finished one",
    description="A queued or running job becomes `cancelled` (its queued work is dropped, its slot freed) and "
    "answers 200 with its record; a finished job (`done`, `failed`, `cancelled`) is deleted with its result: "
    "200 with its last record, then 404.",
    responses=problems(401, 404, 422, 503),
)
async def delete_job(request: Request, job_id: JobIdPath, store: StoreDep) -> dict[str, Any]:
    return public(await request.app.state.jobs.cancel(store, await _record(store, job_id)))
