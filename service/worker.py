"""One inference worker per device: owns its copy of the model and runs the batcher's batches in a thread.

Every :meth:`Worker.compute` call enters ``inference_mode`` (and autocast) itself: those are thread-local.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from kind_serve.model import AUTO, KinD, LightLevel, recipe
from kind_serve.model.parts import CHANNELS, adjust, compose_batch, composition_inputs, join, parts_batch
from kind_serve.model.precision import choose_precision
from kind_serve.model.recipe import inference_context

from .batcher import Batcher
from .metrics import Metrics
from .tickets import BatchKey
from .workload import SpeedMeter

log = logging.getLogger(__name__)


def resolve_devices(spec: str) -> list[torch.device]:
    """``auto`` → every CUDA device (else the CPU); otherwise the comma-separated list given."""
    if spec.strip() == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device(f"cuda:{i}") for i in range(count)] or [torch.device("cpu")]
    devices = [torch.device(part.strip()) for part in spec.split(",")]
    for dev in devices:
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {dev} requested but CUDA is not available")
    return devices


@contextlib.contextmanager
def leave_cores_to_workers(threads: int) -> Iterator[None]:
    """Within: torch runs single-threaded in every thread but the workers' — this one, and any whose first torch
    operation comes later (torch gives a new thread the count last set); after: ``threads`` again.

    The event loop and the helper threads run torch operations too (quantising a region, blending a tile, the grey
    mask). With an OpenMP team of their own beside a worker's, libgomp has more threads than CPUs and stops
    spin-waiting between parallel regions: the worker's composition batches ran ~30 % slower and a 12 MP first
    enhancement 5–15 % (docs/performance.md).
    """
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def layout(op: str) -> torch.memory_format:
    """The memory layout ``op``'s batches compute in: channels-last for the networks; planes (NCHW) for the
    composition (``relight``), whose elementwise maths and per-plane blurs ran 1.5× faster on them."""
    return torch.contiguous_format if op == "relight" else torch.channels_last


def _fixed(levels: list[LightLevel | None]) -> list[LightLevel]:
    """The light levels of a batch whose op takes one per item."""
    if any(level is None for level in levels):
        raise ValueError("this op needs a light level for every item")
    return [level for level in levels if level is not None]


class Worker:
    """A model on one device plus the thread that feeds it batches."""

    def __init__(
        self,
        model: KinD,
        device: torch.device,
        *,
        precision: str = "auto",
        metrics: Metrics,
        threads: int | None = None,
    ) -> None:
        self.device = device
        self.threads = threads or torch.get_num_threads()  # torch's CPU threads for this worker's batches
        self.model = model.prepare(device)
        choice = choose_precision(precision, device)
        self.precision = choice.precision
        self.precision_warning = choice.warning  # shown by /readyz too
        if choice.warning:
            log.warning(choice.warning)
        self.metrics = metrics
        self._thread: threading.Thread | None = None

    @classmethod
    def load(
        cls, checkpoint: Path, device: torch.device, *, precision: str, metrics: Metrics, threads: int | None = None
    ) -> Worker:
        """A worker for the bundle at ``checkpoint``."""
        return cls(KinD.load(checkpoint), device, precision=precision, metrics=metrics, threads=threads)

    def compute(
        self, key: BatchKey, batch: torch.Tensor, params: list[tuple[LightLevel | None, float]]
    ) -> torch.Tensor | list[float]:
        """Run one batch of ``key.op`` on N×C×h×w inputs, with (light level, span) per item; outputs on the CPU.

        ``alpha``: previews → their automatic α; ``enhance``: tiles → the networks' parts; ``relight``: regions' joined
        composition inputs (:func:`model.parts.composition_inputs`) → output; ``adjust``: illumination → adjusted;
        ``decompose``: tiles → R, L [, L_adj when a level].
        """
        model = self.model
        try:
            with inference_context(self.device, self.precision):
                x = batch.to(self.device, dtype=torch.float32, memory_format=layout(key.op), non_blocking=True)
                if key.op == "alpha":
                    return [recipe.choose_alpha(model, x[i : i + 1], key.mode, params[i][1]) for i in range(len(x))]
                levels = [level for level, _ in params]
                span = torch.tensor([sp for _, sp in params], device=self.device).view(-1, 1, 1, 1)
                if key.op == "enhance":
                    out = parts_batch(model, x)
                elif key.op == "relight":
                    mode = key.mode or model.defaults.mode  # relight keys always name theirs
                    out = compose_batch(x, recipe.alpha_tensor(_fixed(levels), self.device), mode, span)
                elif key.op == "adjust":
                    out = adjust(model, x, recipe.alpha_tensor(_fixed(levels), self.device), key.scale)
                elif key.op == "decompose":
                    alpha = None if levels[0] is None else recipe.alpha_tensor(_fixed(levels), self.device)
                    out = recipe.decompose_batch(model, x, alpha)
                else:
                    raise ValueError(f"unknown op {key.op!r}")
                return out.float().cpu()
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # give the retry of the split batch a clean slate
            raise
        finally:
            self.metrics.record_gpu(self.device)

    def _examples(self, side: int) -> list[tuple[BatchKey, torch.Tensor, list[tuple[LightLevel | None, float]]]]:
        """One small item of every op but ``alpha`` (fixed α 2): for warming up and timing."""
        mode = self.model.defaults.mode
        fixed: list[tuple[LightLevel | None, float]] = [(LightLevel(2.0), 1.0)]
        image, maps = torch.rand(1, 3, side, side), torch.rand(1, CHANNELS, side, side)
        composed = join([composition_inputs(maps, maps[:, 6:7])])
        return [
            (BatchKey("enhance", mode, side, side), image, [(None, 1.0)]),
            (BatchKey("relight", mode, side, side), composed, fixed),
            (BatchKey("adjust", mode, side, side), maps[:, 6:7], fixed),
            (BatchKey("decompose", mode, side, side, adjust=True), image, fixed),
        ]

    def warm_up(self, side: int = 64) -> float:
        """Run every op once (first calls pay for allocator and kernel selection); returns seconds."""
        start = time.perf_counter()
        x = torch.rand(1, 3, side, side)
        self.compute(BatchKey("alpha", self.model.defaults.mode, side, side), x, [(AUTO, 1.0)])
        for key, item, params in self._examples(side):
            self.compute(key, item, params)
        return time.perf_counter() - start

    def calibrate(self, speed: SpeedMeter, side: int = 512) -> None:
        """Seed ``speed`` with a timed run of every op but ``alpha`` on a tile-sized ``side``² image."""
        # warm-up's tiny images cost mostly fixed overheads; the second run is timed, as the first at a new size
        # also pays for fresh activation memory
        for key, item, params in self._examples(side):
            self.compute(key, item, params)
            start = time.perf_counter()
            self.compute(key, item, params)
            speed.observe(key.op, side * side, time.perf_counter() - start)

    def start(self, batcher: Batcher) -> None:
        """Start the thread that serves ``batcher``'s batches; returns once it has set its thread count."""
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(batcher, started), name=f"kind-worker-{self.device}", daemon=True
        )
        self._thread.start()
        started.wait()

    def _serve(self, batcher: Batcher, started: threading.Event) -> None:
        # OpenMP keeps a thread count per thread: set in the thread that computes, before leave_cores_to_workers
        # makes 1 the count that torch gives threads on their first call; the get is that first call, so the set
        # is not overwritten by it later
        torch.get_num_threads()
        torch.set_num_threads(self.threads)
        started.set()
        batcher.serve(self.compute)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the thread to end; whether it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True
