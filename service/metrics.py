"""Prometheus metrics of one service instance, in their own registry, with bounded label values.

Routes are labelled by their template (``/images/{image_id}``), never the raw path; unknown paths share
the label ``other``; failure reasons come from a fixed set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from .config import split_address

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
FAILURE_REASONS = (
    "queue_full",
    "draining",
    "timeout",
    "disconnected",
    "oom",
    "inference_error",
    "bad_image",
    "too_large",
    "too_complex",
    "upload_timeout",
    "upload_budget",
    "client_share",
    "headers_too_large",
    "header_timeout",
    "too_many_connections",
    "unauthorized",
    "store_unavailable",
    "internal",
)


class Metrics:
    """Every metric the service exports; one instance per app."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        latency: dict[str, Any] = {"buckets": LATENCY_BUCKETS, "registry": r}
        self.requests = Counter(
            "kind_requests", "HTTP requests by route template and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "kind_request_seconds",
            "HTTP request latency in the server, by route template and status class (2xx … 5xx)",
            ["route", "status_class"],
            **latency,
        )
        self.queue_depth = Gauge("kind_queue_depth", "work items (images or tiles) waiting for a worker", registry=r)
        self.pending_requests = Gauge("kind_pending_requests", "admitted requests not yet answered", registry=r)
        self.queue_wait = Histogram("kind_queue_wait_seconds", "time items wait in the queue", **latency)
        self.compute = Histogram("kind_compute_seconds", "model time per batch", ["op"], **latency)
        self.batch_size = Histogram("kind_batch_size", "items per batch", buckets=BATCH_BUCKETS, registry=r)
        self.images = Counter("kind_images_processed", "images enhanced or decomposed", ["op"], registry=r)
        self.megapixels = Counter("kind_megapixels_processed", "megapixels of processed images", ["op"], registry=r)
        self.failures = Counter("kind_failures", "failed or rejected work by reason", ["reason"], registry=r)
        self.dropped_items = Counter(
            "kind_dropped_items", "queued items dropped before compute", ["reason"], registry=r
        )
        self.decoder_restarts = Counter(
            "kind_decoder_restarts",
            "decoder processes killed and replaced, by reason (timeout, deadline, disconnected, memory, crashed)",
            ["reason"],
            registry=r,
        )
        self.model_info = Info("kind_model", "loaded checkpoint", registry=r)
        self.gpu_memory = Gauge("kind_gpu_memory_bytes", "CUDA memory allocated", ["device", "kind"], registry=r)
        self.parts_cache_bytes = Gauge(
            "kind_parts_cache_bytes", "bytes of α-independent parts kept for re-lighting stored images", registry=r
        )
        self.parts_cache_lookups = Counter(
            "kind_parts_cache_lookups", "re-lighting cache lookups by result (hit, miss)", ["result"], registry=r
        )
        self.ready = Gauge("kind_ready", "1 when the model is loaded and warmed and not draining", registry=r)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        for result in ("hit", "miss"):
            self.parts_cache_lookups.labels(result)

    def fail(self, reason: str) -> None:
        self.failures.labels(reason if reason in FAILURE_REASONS else "internal").inc()

    def record_gpu(self, device: torch.device) -> None:
        if device.type == "cuda":
            name = str(device)
            self.gpu_memory.labels(name, "allocated").set(torch.cuda.memory_allocated(device))
            self.gpu_memory.labels(name, "reserved").set(torch.cuda.memory_reserved(device))
            self.gpu_memory.labels(name, "peak").set(torch.cuda.max_memory_allocated(device))

    def serve(self, address: str | None) -> Callable[[], None] | None:
        """A listener on ``address`` (host:port; Prometheus' own WSGI server in a thread), or None; its stop."""
        if address is None:
            return None
        host, port = split_address(address)
        server, thread = start_http_server(port, host, self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        return stop
