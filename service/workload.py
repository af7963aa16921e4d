"""Work estimates: how long a request's model work takes on this server, learned while it runs.

:class:`SpeedMeter` keeps seconds per megapixel of each operation; :meth:`Workload.deadline` turns it into a
request's deadline, or refuses work that cannot finish in time (docs/service.md, "Deadlines follow the work").
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from .config import Limits
from .problems import Problem


class WorkTooLarge(Problem):
    """The image alone needs more model time than the request may take (413, with the estimate)."""

    def __init__(self, estimate_s: float, limit_s: float, megapixels: float, is_job: bool) -> None:
        self.estimate_s, self.limit_s = estimate_s, limit_s
        advice = (
            "send a smaller image"
            if is_job
            else "submit it as a job (POST /jobs, or the header 'Prefer: respond-async'), or send a smaller image"
        )
        detail = (
            f"this {megapixels:.1f}-megapixel image needs about {estimate_s:.0f} s of model time on this server, "
            f"more than the {limit_s:.0f} s a {'job' if is_job else 'synchronous request'} may take: {advice}"
        )
        extra = {"estimated_seconds": round(estimate_s, 1), "limit_seconds": limit_s}
        super().__init__(413, "Content Too Large", detail, kind="too-much-work", extra=extra)


class WorkBacklog(Problem):
    """The work queued ahead would push this request past its limit (503, Retry-After: the work ahead)."""

    def __init__(self, estimate_s: float, ahead_s: float, limit_s: float) -> None:
        self.estimate_s, self.ahead_s, self.limit_s = estimate_s, ahead_s, limit_s
        self.retry_after_s = max(1, math.ceil(ahead_s))
        detail = (
            f"about {ahead_s:.0f} s of work is queued ahead and this image needs about {estimate_s:.0f} s, "
            f"more than the {limit_s:.0f} s limit: retry in {self.retry_after_s} s, or submit it as a job (POST /jobs)"
        )
        extra = {"estimated_seconds": round(estimate_s, 1), "queued_seconds": round(ahead_s, 1)}
        headers = {"Retry-After": str(self.retry_after_s)}
        super().__init__(503, "Service Unavailable", detail, kind="work-backlog", headers=headers, extra=extra)


class SpeedMeter:
    """Seconds per megapixel of model work for each operation: an EWMA over batches (thread-safe)."""

    def __init__(self, weight: float = 0.3) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        self.weight = weight
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(self, op: str, pixels: int, seconds: float) -> None:
        """One batch of ``op`` covering ``pixels`` (padded) pixels took ``seconds``."""
        if pixels <= 0 or seconds <= 0:
            return
        rate = seconds / (pixels / 1e6)
        with self._lock:
            old = self._rates.get(op)
            self._rates[op] = rate if old is None else old + self.weight * (rate - old)

    def rate(self, op: str) -> float | None:
        """Seconds per megapixel of ``op``, or None before any measurement."""
        with self._lock:
            return self._rates.get(op)

    def seconds(self, op: str, pixels: int) -> float | None:
        """Estimated seconds for ``pixels`` of ``op``, or None before any measurement."""
        rate = self.rate(op)
        return None if rate is None else rate * pixels / 1e6

    def snapshot(self) -> dict[str, float]:
        """Seconds per megapixel of every measured operation."""
        with self._lock:
            return dict(self._rates)


@dataclass
class Workload:
    """The admission rule, with its limits (the :class:`~service.config.Limits` defaults) and learned speed."""

    max_sync_work_s: float = Limits().max_sync_work_s
    max_job_work_s: float = Limits().max_job_work_s
    margin: float = 2.0  # deadline = margin × the estimated work: room for a wrong estimate and for new load
    speed: SpeedMeter = field(default_factory=SpeedMeter)

    def deadline(
        self, op: str, pixels: int, ahead_s: float, *, now: float, timeout_s: float, is_job: bool, image_pixels: int
    ) -> tuple[float, float | None]:
        """``(deadline, estimate_s)`` for ``pixels`` of ``op`` behind ``ahead_s`` of queued work, or raise."""
        own = self.speed.seconds(op, pixels)
        if own is None:
            return now + timeout_s, None
        limit = self.max_job_work_s if is_job else self.max_sync_work_s
        if own > limit:
            raise WorkTooLarge(own, limit, image_pixels / 1e6, is_job)
        if own + ahead_s > limit:
            raise WorkBacklog(own, ahead_s, limit)
        return now + max(timeout_s, self.margin * (own + ahead_s)), own

    def precheck(self, image_pixels: int, *, is_job: bool) -> None:
        """Refuse from the image header alone when even the cheapest measured operation is over the limit."""
        # a lower bound (fewest seconds per megapixel, no tile overlap) that spares a hopeless request the decode
        rates = self.speed.snapshot()
        rates.pop("alpha", None)  # the preview op: small images, not the image's own work
        if rates:
            least = min(rates.values()) * image_pixels / 1e6
            limit = self.max_job_work_s if is_job else self.max_sync_work_s
            if least > limit:
                raise WorkTooLarge(least, limit, image_pixels / 1e6, is_job)
