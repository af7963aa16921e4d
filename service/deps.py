"""Request dependencies: app state accessors, the store scoped to the client, bounded body reading, admission."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .admission import Admission, client_key
from .auth import check_token
from .batcher import Ticket
from .config import Settings
from .inference import ServedModel
from .metrics import Metrics
from .partcache import PartsCache
from .problems import Problem, upload_too_large
from .store import SignedStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> SignedStore:
    """The signed store, scoped to the request's token when auth is on (401 without one); what is stored through
    it is charged to the request's client (429 past its share, :mod:`service.admission`)."""
    scope = check_token(request, request.app.state.settings)
    admission: Admission = request.app.state.admission
    charge = functools.partial(admission.charge_store, client_key(request.scope, admission.settings))
    return request.app.state.store.scoped(scope, charge)


@dataclass(frozen=True)
class Engine:
    """What computing an image needs of the app: settings, the served model, metrics and the parts cache."""

    settings: Settings
    served: ServedModel
    metrics: Metrics
    cache: PartsCache

    @classmethod
    def of(cls, state: Any) -> Engine:
        """The engine of an app's ``state`` (a route's request or a job's runner)."""
        return cls(state.settings, state.served_model, state.metrics, state.parts_cache)


def get_engine(request: Request) -> Engine:
    return Engine.of(request.app.state)


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[SignedStore, Depends(get_store)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def require_token(request: Request) -> None:
    """The API routers' dependency: 401 without a valid token (:func:`service.auth.check_token`)."""
    check_token(request, request.app.state.settings)


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a raw body or of the multipart field ``file``; 413 past ``limit`` bytes (``UploadGate``
    has received the body already, under the same limit, so nothing is read here beyond it)."""
    body = await request.body()
    if len(body) > limit:
        raise upload_too_large(limit)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return body
    try:
        form = await MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise Problem(422, "Bad multipart body", exc.message, kind="bad-request-body") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            detail = "the multipart body needs the image in a field named 'file'"
            raise Problem(422, "Missing file", detail, kind="bad-request-body")
        return await upload.read()
    finally:
        await form.close()


@contextlib.asynccontextmanager
async def admitted(request: Request, *, light: bool = False) -> AsyncIterator[Ticket]:
    """Admission for one request (its body is already received, see ``UploadGate``); released when the
    response is ready. ``light``: parsing or reading only, no model work. Rules: :mod:`service.admission`."""
    admission: Admission = request.app.state.admission
    with admission.admit(client_key(request.scope, admission.settings), light=light) as ticket:
        yield ticket


@contextlib.asynccontextmanager
async def drop_on_disconnect(request: Request, ticket: Ticket) -> AsyncIterator[None]:
    """Cancel the ticket's queued work if the client goes away (call after the body is read)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                ticket.cancel("disconnected")
                return

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
