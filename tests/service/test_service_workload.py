"""Deadlines that follow the work: learned speed, refusal at admission with the estimate, the queue gauge."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from kind_serve.service.app import create_app
from kind_serve.service.config import Limits
from kind_serve.service.worker import Worker
from kind_serve.service.workload import SpeedMeter, WorkBacklog, Workload, WorkTooLarge

from .conftest import image_bytes
from .test_service_api import assert_problem


def test_speed_meter_learns_seconds_per_megapixel_per_operation() -> None:
    meter = SpeedMeter(weight=0.5)
    assert meter.seconds("enhance", 1_000_000) is None
    meter.observe("enhance", 500_000, 2.0)  # 4 s/MP
    meter.observe("enhance", 1_000_000, 6.0)  # 6 s/MP → EWMA 5
    meter.observe("decompose", 1_000_000, 0.5)
    assert meter.rate("enhance") == pytest.approx(5.0)
    assert meter.seconds("enhance", 2_000_000) == pytest.approx(10.0)
    assert meter.rate("decompose") == pytest.approx(0.5)


def test_workload_deadline_refusals_and_margin() -> None:
    work = Workload(max_sync_work_s=100, max_job_work_s=1000, margin=2)
    common = {"now": 50.0, "timeout_s": 60.0, "image_pixels": 10_000_000}
    assert work.deadline("enhance", 10_000_000, 0, is_job=False, **common) == (110.0, None)  # nothing measured
    work.speed.observe("enhance", 1_000_000, 8.0)  # 8 s/MP
    deadline, estimate = work.deadline("enhance", 5_000_000, 10, is_job=False, **common)
    assert estimate == pytest.approx(40) and deadline == pytest.approx(50 + 2 * (40 + 10))
    assert work.deadline("enhance", 1_000_000, 0, is_job=False, **common)[0] == 110.0  # never below the timeout
    with pytest.raises(WorkTooLarge, match="POST /jobs") as too_large:
        work.deadline("enhance", 20_000_000, 0, is_job=False, **common)
    assert too_large.value.estimate_s == pytest.approx(160) and too_large.value.limit_s == 100
    assert work.deadline("enhance", 20_000_000, 0, is_job=True, **common)[1] == pytest.approx(160)  # a job may
    with pytest.raises(WorkBacklog) as backlog:
        work.deadline("enhance", 5_000_000, 75, is_job=False, **common)
    assert backlog.value.retry_after_s == 75


def test_precheck_refuses_from_the_header_when_even_the_cheapest_op_is_too_slow() -> None:
    work = Workload(max_sync_work_s=100, max_job_work_s=1000)
    work.precheck(50_000_000, is_job=False)  # nothing measured: no opinion
    work.speed.observe("enhance", 1_000_000, 10.0)
    work.speed.observe("decompose", 1_000_000, 1.0)
    work.speed.observe("alpha", 10_000, 5.0)  # previews are not the image's own work
    work.precheck(90_000_000, is_job=False)  # decompose could do it in 90 s
    with pytest.raises(WorkTooLarge) as refused:
        work.precheck(120_000_000, is_job=False)
    assert refused.value.estimate_s == pytest.approx(120)
    work.precheck(120_000_000, is_job=True)


def slow_worker(monkeypatch, seconds: float) -> None:
    original = Worker.compute

    def slow(self, key, batch, params):
        time.sleep(seconds)
        return original(self, key, batch, params)

    monkeypatch.setattr(Worker, "compute", slow)


def test_an_image_too_large_for_a_request_is_refused_at_admission_with_the_estimate(make_settings) -> None:
    with TestClient(create_app(make_settings(), Limits(max_sync_work_s=5, max_job_work_s=10_000))) as c:
        c.app.state.batcher.workload.speed.observe("enhance", 10_000, 1.0)  # 100 s per megapixel
        started = time.monotonic()
        body = assert_problem(c.post("/enhance?alpha=2", content=image_bytes(200, 150)), 413)
        assert time.monotonic() - started < 5  # refused before the model work, not after it
        assert body["estimated_seconds"] > 5 and body["limit_seconds"] == 5
        assert "POST /jobs" in body["detail"] and "respond-async" in body["detail"]
        assert c.app.state.batcher.depth == 0 and c.app.state.batcher.pending == 0
        assert c.post("/enhance?alpha=2", content=image_bytes(20, 20)).status_code == 200  # small work still fits


def test_a_long_queue_ahead_is_answered_503_with_retry_after(make_settings, monkeypatch) -> None:
    with TestClient(create_app(make_settings(), Limits(max_sync_work_s=30))) as c:
        c.app.state.batcher.workload.speed.observe("enhance", 1_000_000, 1.0)
        monkeypatch.setattr(type(c.app.state.batcher), "backlog_seconds", lambda self: 45.0)
        resp = c.post("/enhance?alpha=2", content=image_bytes(60, 40))
        body = assert_problem(resp, 503)
        assert resp.headers["retry-after"] == "45"
        assert body["queued_seconds"] == 45.0 and "POST /jobs" in body["detail"]


def test_the_deadline_follows_the_measured_work(make_settings, monkeypatch) -> None:
    """Each 64-px tile takes over 0.1 s: the 1 s timeout would cut a 200×140 image off; the estimate does not."""
    slow_worker(monkeypatch, 0.1)
    settings = make_settings(request_timeout_s=1.0, max_batch_size=1)
    with TestClient(create_app(settings)) as c:
        assert_problem(c.post("/enhance?alpha=2", content=image_bytes(200, 140)), 504)  # nothing measured yet
        assert c.app.state.batcher.workload.speed.rate("enhance") is not None  # ... but it was learned meanwhile
        resp = c.post("/enhance?alpha=2", content=image_bytes(200, 140, seed=1))
        assert resp.status_code == 200, resp.text


def test_the_queue_gauge_returns_to_zero_after_timeouts(make_settings, monkeypatch) -> None:
    slow_worker(monkeypatch, 0.2)
    with TestClient(create_app(make_settings(request_timeout_s=0.3, max_batch_size=1))) as c:
        # learning nothing keeps the 0.3 s deadline (a learned speed would give these images the time they need)
        monkeypatch.setattr(c.app.state.batcher.workload.speed, "observe", lambda *args: None)
        for seed in range(2):
            assert_problem(c.post("/enhance?alpha=2", content=image_bytes(300, 200, seed=seed)), 504)
            assert c.app.state.metrics.queue_depth._value.get() == 0
            assert c.app.state.batcher.depth == 0
        text = c.get("/metrics").text
        assert "kind_queue_depth 0.0" in text
