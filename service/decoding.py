"""Decoding in capped worker processes: what decoding an upload may cost the server, whatever the file says.

A codec trusts its file and allocates for what it declares before Python sees a pixel, so every upload is
decoded (:mod:`service.imaging`) in one of ``DECODE_WORKERS`` processes forked from a forkserver, each under an
address-space cap (413) and a time limit (422); at the request's deadline (504) or its client's disconnect the
process is killed, and the call returns only once it is gone. Pixels come back through shared memory; the
decoded size, never the header's, is what admission charges (docs/service.md, "Decoding is contained").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from kind_serve.model.cpu import release_freed_memory

from .imaging import Header, load_rgb, metadata, open_checked
from .metrics import Metrics
from .problems import Problem
from .tickets import Cancelled, DeadlineExceeded, Ticket

log = logging.getLogger(__name__)

_POLL_S = 0.1  # how often a waiting request checks its deadline and its client
# why a worker was killed mid-job, by what stopped the job (a Problem: its time limit), for the metrics
_REASONS: dict[type[BaseException], str] = {Cancelled: "disconnected", DeadlineExceeded: "deadline", Problem: "timeout"}
_MiB = 1 << 20


# a job: (upload bytes, max pixels, shared-memory name for the pixels or None to validate only)
_Job = tuple[bytes, int, str | None]
# two decodes at once keep the batcher fed; a third would mostly wait on the same cores
DECODE_WORKERS = 2
# a real photo decodes in well under a second; a decode running this long is a codec stuck on a hostile file
DECODE_TIMEOUT_S = 30.0


# -- the worker process -------------------------------------------------------------------------------------


def _cap_address_space(extra_bytes: int) -> None:
    """Limit this process to its present address space plus ``extra_bytes`` (inherited mappings differ by host)."""
    with open("/proc/self/status", encoding="ascii") as status:
        size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = size_kb * 1024 + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _serve(conn: Connection, memory_bytes: int) -> None:
    """A worker's loop: one job at a time until the pipe closes (the service is gone or replaced it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the service decides
    _cap_address_space(memory_bytes)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(_decode(conn, job))
        except MemoryError:
            detail = (
                f"decoding this image needs more than the decoder's memory cap of {memory_bytes // _MiB} MiB "
                "(KIND_DECODE_MEMORY_MB), whatever its header declares"
            )
            conn.send(("problem", 413, "Image too large", detail, "too-large"))
            return  # a heap that hit the cap mid-way is not worth keeping: the service forks a fresh one
        except Problem as exc:
            conn.send(("problem", exc.status, exc.title, exc.detail, exc.kind))
        except Exception as exc:  # a codec's or metadata reader's own error: the image's fault
            conn.send(("problem", 422, "Corrupt image", f"the image could not be decoded ({exc})", "bad-image"))
        finally:
            del job
            release_freed_memory()


def _decode(conn: Connection, job: _Job) -> tuple[Any, ...]:
    data, max_pixels, shm_name = job
    with open_checked(data, max_pixels) as image:
        assert image.format is not None  # Image.open names the format it opened
        header = (image.format.lower(), image.width, image.height)
        conn.send(("header", *header))
        if not conn.recv():
            return ("abandoned",)
        rgb = load_rgb(image, max_pixels)
    metadata(data)  # read here first, where a hostile EXIF or ICC can cost only this process
    if shm_name is not None:
        raw = rgb.tobytes()
        rgb.close()
        shm = SharedMemory(shm_name, create=True, size=max(len(raw), 1))
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]  # the service unlinks it
        assert shm.buf is not None  # None only once closed
        shm.buf[: len(raw)] = raw
        shm.close()
    return ("done", *header, rgb.width, rgb.height)


# -- the service side ---------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """A decoded upload: its header, decoded (upright) size, and pixels in shared memory."""

    header: Header
    width: int
    height: int
    _shm: SharedMemory | None = field(default=None, repr=False)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def array(self) -> np.ndarray:
        """The H×W×3 uint8 pixels, a view of the shared memory: copy them before :meth:`release`."""
        if self._shm is None:
            raise ValueError("decoded to validate only: no pixels")
        return np.ndarray((self.height, self.width, 3), np.uint8, buffer=self._shm.buf)

    def release(self) -> None:
        if self._shm is not None:
            _drop(self._shm)
            self._shm = None


_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_unseen() -> Iterator[None]:
    """Hide the main script from a starting worker: multiprocessing would run it there again (a test runner's,
    a benchmark's) when it is a plain file; the worker needs only this module, which the forkserver holds."""
    main = sys.modules["__main__"]
    path = main.__dict__.pop("__file__", None) if getattr(main, "__spec__", None) is None else None
    try:
        yield
    finally:
        if path is not None:
            main.__file__ = path


class _Worker:
    def __init__(self, ctx: Any, memory_bytes: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, memory_bytes), daemon=True, name="kind-decoder")
        with _START_LOCK, _main_unseen():
            self.process.start()
        child.close()

    def kill(self) -> None:
        """Stop the process now and wait until it is gone (blocking: call off the event loop)."""
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join()
        self.conn.close()


class DecodePool:
    """``workers`` capped decoder processes (see the module docstring), refusing images over ``max_pixels``;
    used from the event loop only."""

    def __init__(self, workers: int, memory_bytes: int, timeout_s: float, max_pixels: int, metrics: Metrics) -> None:
        self.size, self.memory_bytes, self.timeout_s, self.metrics = workers, memory_bytes, timeout_s, metrics
        self.max_pixels = max_pixels
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["kind_serve.service.decoding"])  # the decoders, imported once
        self.idle: asyncio.Queue[_Worker] = asyncio.Queue()  # made again in start(), on the serving event loop
        self._all: set[_Worker] = set()
        self._names = itertools.count()
        self._closed = False
        self._replacing: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.idle = asyncio.Queue()
        self._closed = False
        for _ in range(self.size):
            self._add(await run_in_threadpool(_Worker, self._ctx, self.memory_bytes))

    async def close(self) -> None:
        self._closed = True
        for task in list(self._replacing):
            task.cancel()
        workers, self._all = list(self._all), set()
        for worker in workers:
            await run_in_threadpool(worker.kill)

    def _add(self, worker: _Worker) -> None:
        if self._closed:
            worker.kill()
            return
        self._all.add(worker)
        self.idle.put_nowait(worker)

    async def _replace(self, worker: _Worker, reason: str) -> None:
        """Kill ``worker`` and wait until it is gone; a fresh one joins the pool in the background."""
        self.metrics.decoder_restarts.labels(reason).inc()
        self._all.discard(worker)
        await run_in_threadpool(worker.kill)
        if not self._closed:
            task = asyncio.create_task(self._refill())
            self._replacing.add(task)
            task.add_done_callback(self._replacing.discard)

    async def _refill(self) -> None:
        try:
            self._add(await run_in_threadpool(_Worker, self._ctx, self.memory_bytes))
        except Exception:  # the pool shrinks by one; the next replacement tries again
            log.exception("could not start a decoder process")

    async def decode(self, ticket: Ticket, data: bytes, *, pixels: bool = True) -> Decoded:
        """Decode ``data`` for ``ticket``'s request, refused from the header alone when the ticket's
        :meth:`~Ticket.precheck` refuses its size. Call :meth:`Decoded.release` when done with the pixels."""
        worker = await self._acquire(ticket)
        name = f"kind-{os.getpid()}-{next(self._names)}" if pixels else None
        until = asyncio.get_running_loop().time() + self.timeout_s
        try:
            reply = await self._exchange(worker, ticket, (data, self.max_pixels, name), until)
            if reply[0] == "problem":
                raise Problem(*reply[1:4], kind=reply[4])
        except BaseException:
            _drop(name)
            raise
        _, fmt, header_width, header_height, width, height = reply
        shm = None if name is None else SharedMemory(name)
        return Decoded(Header(fmt, header_width, header_height), width, height, shm)

    async def _exchange(self, worker: _Worker, ticket: Ticket, job: _Job, until: float) -> tuple[Any, ...]:
        """Run ``job`` on ``worker`` to its last message; the worker ends idle again, or killed and replaced."""
        settled = False  # the worker is back in the pool, or being replaced
        try:
            await run_in_threadpool(worker.conn.send, job)
            reply = await self._receive(worker, ticket, until)
            refusal: Exception | None = None
            if reply[0] == "header":
                try:
                    ticket.precheck(reply[2] * reply[3])
                except Exception as exc:
                    refusal = exc
                worker.conn.send(refusal is None)
                reply = await self._receive(worker, ticket, until)
            settled = True
            if reply[0] == "problem" and "KIND_DECODE_MEMORY_MB" in reply[3]:
                await self._replace(worker, "memory")  # it exits after answering: a fresh one takes its place
            else:
                self.idle.put_nowait(worker)
            if refusal is not None:
                raise refusal
            return reply
        except BaseException as exc:
            if settled:
                raise
            crashed = isinstance(exc, OSError | EOFError)  # the worker exited without answering
            reason = next((why for kind, why in _REASONS.items() if isinstance(exc, kind)), "cancelled")
            await self._replace(worker, "crashed" if crashed else reason)
            if crashed:
                detail = "the decoder stopped on this image (it crashed or exceeded its limits)"
                raise Problem(422, "Corrupt image", detail, kind="bad-image") from None
            raise

    async def _acquire(self, ticket: Ticket) -> _Worker:
        while True:
            _check(ticket)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(self.idle.get(), _POLL_S)

    async def _receive(self, worker: _Worker, ticket: Ticket, until: float) -> tuple[Any, ...]:
        """The worker's next message; raises at the time limit, the deadline or a disconnect (the caller kills it).

        The pipe is waited on in a thread, not with the event loop's ``add_reader``: uvloop would make the
        socket non-blocking, and a large upload sent to it next would fail half-way."""
        loop = asyncio.get_running_loop()
        while not await run_in_threadpool(worker.conn.poll, _POLL_S):
            _check(ticket)
            if loop.time() >= until:
                detail = f"decoding this image took longer than {self.timeout_s:g} s"
                raise Problem(422, "Image too complex", detail, kind="too-complex-image")
        return worker.conn.recv()


def _check(ticket: Ticket) -> None:
    """Raise when the request is over: its client is gone, or its deadline has passed."""
    if ticket.cancelled and ticket.cancelled != "timeout":
        raise Cancelled
    if ticket.cancelled == "timeout" or ticket.deadline <= time.monotonic():  # the batcher's clock
        ticket.cancel("timeout")
        raise DeadlineExceeded("the image was not decoded within the request deadline")


def _drop(shm: SharedMemory | str | None) -> None:
    """Remove a shared-memory block, by name when a killed or refusing worker may have left it."""
    with contextlib.suppress(FileNotFoundError):
        if shm is not None:
            shm = SharedMemory(shm) if isinstance(shm, str) else shm
            shm.close()
            shm.unlink()
