"""RFC 9457 problem details (``application/problem+json``) for every error the service returns.

Domain errors raise :class:`Problem` (or a model error mapped here); FastAPI validation errors, Starlette's
404/405 and anything unexpected are rendered the same way. Responses never carry stack traces.
"""

from __future__ import annotations

import logging
from dataclasses import KW_ONLY, dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from kind_serve.model import AlphaError

from .batches import BatchFailed
from .metrics import FAILURE_REASONS
from .store import StoreUnavailable
from .tickets import Cancelled, DeadlineExceeded, Draining, QueueFull
from .workload import WorkBacklog, WorkTooLarge

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://kind-serve.invalid/problems/"  # stable identifiers, not fetched by clients


@dataclass(eq=False)  # eq=False: compared and hashed by identity, as exceptions are
class Problem(Exception):
    """An HTTP error with an RFC 9457 body; ``kind`` becomes the ``type`` URI and the metrics reason."""

    status: int
    title: str
    detail: str
    _: KW_ONLY
    kind: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    def body(self, instance: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body: every problem+json the service sends, from the app or its HTTP server, is this."""
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.kind if self.kind else "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if request_id:
            body["request_id"] = request_id
        return {**body, **self.extra}


def upload_too_large(limit: int) -> Problem:
    return Problem(413, "Content Too Large", f"the upload exceeds the limit of {limit} bytes", kind="too-large-upload")


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    """``problem`` as an ``application/problem+json`` answer to ``request``, counted by its kind."""
    body = problem.body(request.url.path, getattr(request.state, "request_id", None))
    reason = REASONS.get(problem.kind or "")
    metrics = getattr(request.app.state, "metrics", None)
    if reason and metrics is not None:
        metrics.fail(reason)
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON)


# problem kind → kind_failures_total reason, wherever the problem is answered: the reason's own spelling, or
# one shared by several kinds; "out-of-memory" and "inference-error" are counted by the batcher, where items fail
REASONS = {reason.replace("_", "-"): reason for reason in FAILURE_REASONS if reason not in ("oom", "inference_error")}
REASONS |= {
    "unsupported-image": "bad_image",
    "too-large-upload": "too_large",
    "too-much-work": "too_large",
    "work-backlog": "queue_full",
    "too-complex-image": "too_complex",
}

# with RFC 9110's names where Python's HTTPStatus still has RFC 7231's
_TITLES = {s.value: s.phrase for s in HTTPStatus} | {413: "Content Too Large", 422: "Unprocessable Content"}


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = _TITLES.get(exc.status_code, "Error")
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no resource at {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers["Allow"] = allowed  # Starlette lists only the first matching route's methods (GET, not GET+POST)
    return problem_response(request, Problem(exc.status_code, title, detail, headers=headers))


def _allowed_methods(request: Request) -> str:
    """Methods of every documented operation on this path (routes sit in nested routers, so ask OpenAPI)."""
    path = request.url.path
    methods = {
        method.upper()
        for template, operations in request.app.openapi().get("paths", {}).items()
        if compile_path(template)[0].match(path)
        for method in operations
    }
    return ", ".join(sorted(methods))


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # without the echoed input (which may be large or binary) or pydantic URLs
    errors = [{"loc": [str(p) for p in e["loc"]], "msg": str(e["msg"]), "type": str(e["type"])} for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    return problem_response(
        request, Problem(422, "Unprocessable Content", detail, kind="invalid-request", extra={"errors": errors})
    )


def as_problem(exc: Exception, retry_after_s: int = 1) -> Problem | None:
    """The problem a batcher, store or model outcome is answered with; None for an unexpected error."""
    retry = {"Retry-After": str(retry_after_s)}
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, AlphaError):
        return Problem(422, "Unprocessable Content", str(exc), kind="invalid-alpha")
    if isinstance(exc, QueueFull):
        return Problem(503, "Service Unavailable", f"server busy: {exc}; retry later", kind="queue-full", headers=retry)
    if isinstance(exc, Draining):
        detail = "the server is shutting down; retry on another replica"
        return Problem(503, "Service Unavailable", detail, kind="draining", headers=retry)
    if isinstance(exc, DeadlineExceeded):
        return Problem(504, "Gateway Timeout", f"request timed out: {exc}", kind="timeout")
    if isinstance(exc, Cancelled):
        return Problem(499, "Client Closed Request", "the client disconnected", kind="disconnected")
    if isinstance(exc, BatchFailed) and exc.reason == "oom":
        detail = "not enough accelerator memory for this image right now; retry later or send a smaller image"
        return Problem(503, "Service Unavailable", detail, kind="out-of-memory", headers=retry)
    if isinstance(exc, BatchFailed):
        return Problem(500, "Internal Server Error", "inference failed for this image", kind="inference-error")
    if isinstance(exc, WorkTooLarge):
        extra = {"estimated_seconds": round(exc.estimate_s, 1), "limit_seconds": exc.limit_s}
        return Problem(413, "Content Too Large", str(exc), kind="too-much-work", extra=extra)
    if isinstance(exc, WorkBacklog):
        extra = {"estimated_seconds": round(exc.estimate_s, 1), "queued_seconds": round(exc.ahead_s, 1)}
        headers = {"Retry-After": str(exc.retry_after_s)}
        return Problem(503, "Service Unavailable", str(exc), kind="work-backlog", headers=headers, extra=extra)
    if isinstance(exc, StoreUnavailable):
        return Problem(503, "Service Unavailable", str(exc), kind="store-unavailable", headers=retry)
    return None


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    """Problems, and light-level, batcher and store outcomes (the batcher never sees HTTP)."""
    limits = getattr(request.app.state, "limits", None)
    problem = as_problem(exc, limits.retry_after_s if limits else 1)
    return await _unexpected(request, exc) if problem is None else problem_response(request, problem)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    detail = "the server failed to handle this request"
    return problem_response(request, Problem(500, "Internal Server Error", detail, kind="internal"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    # Problem and the outcomes as_problem maps: handled inside the middleware, which sees their status
    for exc_type in (
        Problem,
        AlphaError,
        QueueFull,
        Draining,
        DeadlineExceeded,
        Cancelled,
        BatchFailed,
        StoreUnavailable,
        WorkTooLarge,
        WorkBacklog,
    ):
        app.add_exception_handler(exc_type, _domain)
    app.add_exception_handler(Exception, _unexpected)
