"""Application factory: ``create_app(settings)`` builds the FastAPI app; its lifespan owns the workers.

Start-up: load the checkpoint once per device, warm every worker up, start the worker threads, then
report ready. Shutdown (SIGTERM via uvicorn): ``/readyz`` turns 503 and new requests get 503 at once,
admitted requests finish within ``shutdown_grace_s``, then the workers stop on their sentinels.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from kind_serve.model import retain_freed_memory

from . import errors
from .admission import Admission, UploadGate
from .auth import Tokens
from .batcher import Batcher, pixel_budget
from .config import Limits, Settings
from .inference import ServedModel, geometry
from .jobs import JobRunner
from .logs import RequestContext
from .metrics import Metrics
from .partcache import PartsCache
from .routes import api_router, pages
from .routes.jobs import run_work
from .store import JobQueue, MemoryQueue, MemoryStore, RedisQueue, RedisStore, SignedStore
from .worker import Worker, leave_cores_to_workers, resolve_devices
from .workload import SpeedMeter

log = logging.getLogger(__name__)

# the response headers a browser page on another origin may read
EXPOSED_HEADERS = ["X-Alpha", "X-Exposure-Gain", "X-Model-Version", "X-Quality", "ETag", "X-Request-ID", "Retry-After"]

DESCRIPTION = """Low-light image enhancement with KinD (Zhang, Zhang, Guo, ACM MM 2019).

Errors are RFC 9457 problem details (`application/problem+json`). When bearer-token auth is on, every
route except `/livez`, `/readyz` (and `/metrics` unless configured) needs `Authorization: Bearer <token>`.
"""


def _make_store_and_queue(settings: Settings, limits: Limits, key: bytes) -> tuple[SignedStore, JobQueue]:
    """Both in Redis when ``redis_url`` is set (shared by the replicas), else in this process."""
    if not settings.redis_url:
        return SignedStore(MemoryStore(settings.store_max_bytes, settings.store_ttl_s), key), MemoryQueue()
    url, timeout = settings.redis_url, limits.redis_timeout_s
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    store = RedisStore(url, settings.store_ttl_s, timeout, password)
    return SignedStore(store, key), RedisQueue(url, timeout, password)


def _load_workers(settings: Settings, metrics: Metrics, speed: SpeedMeter, threads: int) -> list[Worker]:
    torch.set_num_threads(threads)  # warm-up and calibration at the workers' count
    workers = []
    for device in resolve_devices(settings.device):
        if device.type == "cpu":
            retain_freed_memory()  # faster CPU inference (model/cpu.py); memory is bounded by batch budgets
        worker = Worker.load(
            settings.checkpoint, device, precision=settings.precision, metrics=metrics, threads=threads
        )
        if settings.warmup:
            log.info("warmed up %s in %.2f s", device, worker.warm_up())
            worker.calibrate(speed)  # seeds the work estimates that set deadlines (service.workload)
            log.info("speed on %s: %s s per megapixel", device, speed.snapshot())
        workers.append(worker)
    return workers


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    settings: Settings = state.settings
    # in a thread of its own that ends with the loading, so that no pooled thread keeps the workers' thread count
    # (leave_cores_to_workers)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kind-load") as loader:
        load = functools.partial(_load_workers, settings, state.metrics, state.batcher.workload.speed, state.threads)
        workers = await asyncio.get_running_loop().run_in_executor(loader, load)
    model = workers[0].model
    precision = ",".join(sorted({w.precision for w in workers}))
    state.served_model = ServedModel(
        model.version, model.defaults, geometry(settings, model.defaults, state.limits), precision
    )
    devices = ",".join(str(w.device) for w in workers)
    trained = str(model.restoration_trained).lower()
    info = {"version": model.version, "devices": devices, "restoration_trained": trained, "precision": precision}
    state.metrics.model_info.info(info)
    if not await state.store.inner.ping():
        log.warning("image store (%s) unreachable at start-up: store routes will answer 503", state.store.backend)
    state.batcher.pixel_budget = pixel_budget(w.device for w in workers)
    for worker in workers:
        worker.start(state.batcher)
    await state.admission.decoders.start()
    state.jobs.start()
    stop_metrics = state.metrics.serve(settings.metrics_address)
    state.warnings = [w.precision_warning for w in workers if w.precision_warning]  # /readyz shows them
    state.ready = True
    state.metrics.ready.set(1)
    log.info("ready: %s on %s", model.version, devices)
    try:
        with leave_cores_to_workers(state.threads):
            yield
    finally:
        begin_drain(app)
        await state.jobs.close()  # running jobs go back to the queue for another replica (alone: failed, with why)
        if not await state.batcher.wait_idle(settings.shutdown_grace_s):
            log.warning("grace period over with %d requests unfinished", state.batcher.pending)
        state.batcher.stop(len(workers))
        for worker in workers:
            await run_in_threadpool(worker.join, 5.0)
        await state.admission.decoders.close()
        await state.store.inner.close()
        state.parts_cache.clear()
        if stop_metrics is not None:
            stop_metrics()
        log.info("stopped")


def begin_drain(app: FastAPI) -> None:
    """Readiness off and admissions closed; admitted requests carry on (safe to call twice)."""
    app.state.draining = True
    app.state.metrics.ready.set(0)
    app.state.batcher.drain()


def create_app(settings: Settings | None = None, limits: Limits | None = None) -> FastAPI:
    """The service for ``settings`` (read from ``KIND_*`` variables when not given) under ``limits`` (the
    fixed protocol limits when not given; tests pass smaller ones)."""
    settings = settings or Settings()
    limits = limits or Limits()
    metrics = Metrics()
    app = FastAPI(
        title="KinD Serve",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # pages.install serves /docs and /redoc with local assets
        redoc_url=None,
        openapi_url=None,  # pages.install serves the schema behind the API's auth
        openapi_tags=[
            {"name": "enhance", "description": "low-light enhancement"},
            {"name": "decompose", "description": "reflectance / illumination decomposition"},
            {"name": "images", "description": "image store"},
            {"name": "jobs", "description": "long work as asynchronous jobs: progress, ETA, result, cancel"},
            {"name": "probes", "description": "health and metrics"},
        ],
    )
    state = app.state
    state.settings = settings
    state.limits = limits
    state.metrics = metrics
    state.ready = state.draining = False
    state.threads = torch.get_num_threads()  # the workers' (OMP_NUM_THREADS, else the cores), as the app is made
    # signs stored entries and names token scopes; a random key suits a store no other process reads
    key = settings.store_key.get_secret_value().encode() if settings.store_key else secrets.token_bytes(32)
    state.store, queue = _make_store_and_queue(settings, limits, key)
    state.tokens = Tokens(settings.auth_tokens, key)
    state.batcher = Batcher.from_settings(settings, metrics, limits)
    state.admission = Admission(settings, state.batcher, limits)
    state.jobs = JobRunner(state, queue, run_work)
    state.parts_cache = PartsCache(settings.parts_cache_bytes, metrics)
    errors.install(app)
    app.include_router(api_router)
    pages.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match", "X-Request-ID"],
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(UploadGate, admission=state.admission)
    app.add_middleware(RequestContext, metrics=metrics)
    return app
