"""Every error the service returns as an RFC 9457 problem (``application/problem+json``).

Every refusal the service makes is a :class:`~service.problems.Problem` (the batcher's, the store's and the work
estimates' are subclasses); a light-level error is mapped here, and FastAPI validation errors, Starlette's
404/405 and anything unexpected are rendered the same way. Responses never carry stack traces.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from kind_serve.model import AlphaError

from .metrics import FAILURE_REASONS
from .problems import PROBLEM_JSON, Problem

log = logging.getLogger(__name__)


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    """``problem`` as an ``application/problem+json`` answer to ``request``, counted by its kind; a 503 carries
    ``Retry-After`` (the limits' unless the problem names its own)."""
    body = problem.body(request.url.path, getattr(request.state, "request_id", None))
    state = request.app.state
    reason = REASONS.get(problem.kind or "")
    if reason and getattr(state, "metrics", None) is not None:
        state.metrics.fail(reason)
    headers, limits = problem.headers, getattr(state, "limits", None)
    if problem.status == 503:
        headers = {"Retry-After": str(limits.retry_after_s if limits else 1), **headers}
    return JSONResponse(body, status_code=problem.status, headers=headers, media_type=PROBLEM_JSON)


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


def as_problem(exc: Exception) -> Problem | None:
    """The problem an outcome is answered with: itself, or a light-level error's 422; None for an unexpected error."""
    if isinstance(exc, AlphaError):
        return Problem(422, "Unprocessable Content", str(exc), kind="invalid-alpha")
    return exc if isinstance(exc, Problem) else None


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    problem = as_problem(exc)
    return await _unexpected(request, exc) if problem is None else problem_response(request, problem)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    detail = "the server failed to handle this request"
    return problem_response(request, Problem(500, "Internal Server Error", detail, kind="internal"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    # handled inside the middleware, which sees their status
    app.add_exception_handler(Problem, _domain)
    app.add_exception_handler(AlphaError, _domain)
    app.add_exception_handler(Exception, _unexpected)
