"""One batch of the batcher and its running: a batch that raises (out of memory included) is retried in halves,
so only the items that fail on their own fail (:class:`BatchFailed`)."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .metrics import Metrics
from .tickets import BatchKey, Handoff, Ticket
from .workload import SpeedMeter

log = logging.getLogger(__name__)

Compute = Callable[[BatchKey, torch.Tensor, list[Any]], torch.Tensor | Sequence[Any]]


class BatchFailed(Exception):
    """An item failed even when run alone; ``reason`` is ``oom`` or ``inference_error``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(eq=False)
class Item:
    future: concurrent.futures.Future
    tensor: torch.Tensor
    enqueued_at: float
    deadline: float
    key: BatchKey
    params: Any  # what the compute function takes per item: (light level, span) for the KinD worker
    ticket: Ticket


@dataclass
class Batch:
    key: BatchKey
    items: list[Item]


def run_isolated(compute: Compute, key: BatchKey, items: list[Item], metrics: Metrics, speed: SpeedMeter) -> None:
    """Run ``items`` as one batch; when it raises, retry it in halves, so only items that fail alone fail."""
    start = time.perf_counter()
    try:
        outputs = compute(key, torch.cat([i.tensor for i in items]), [i.params for i in items])
        if len(outputs) != len(items):
            raise RuntimeError(f"model returned {len(outputs)} outputs for {len(items)} inputs")
    except Exception as exc:
        oom = isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()
        reason = "oom" if oom else "inference_error"
        if len(items) > 1:
            log.warning("batch of %d %s items failed (%s: %s); retrying in halves", len(items), key.op, reason, exc)
            half = len(items) // 2
            run_isolated(compute, key, items[:half], metrics, speed)
            run_isolated(compute, key, items[half:], metrics, speed)
            return
        log.error("%s item failed alone (%s): %s", key.op, reason, exc)
        metrics.fail(reason)
        items[0].future.set_exception(BatchFailed(reason, str(exc)))
        return
    elapsed = time.perf_counter() - start
    metrics.compute.labels(key.op).observe(elapsed)
    speed.observe(key.op, len(items) * key.height * key.width, elapsed)
    metrics.batch_size.observe(len(items))
    for item, out in zip(items, outputs, strict=True):
        item.future.set_result(Handoff(out))
