"""Asynchronous jobs: 202 + Location, progress and ETA, the result byte for byte, cancel, 404s, Redis replicas."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.worker import Worker

from .conftest import image_bytes
from .test_service_api import assert_problem


@pytest.fixture
def slow_compute(monkeypatch) -> None:
    """Every batch takes at least 0.15 s more, so a job's progress can be watched."""
    original = Worker.compute

    def slow(self, key, batch, params):
        time.sleep(0.15)
        return original(self, key, batch, params)

    monkeypatch.setattr(Worker, "compute", slow)


def wait_for(client: TestClient, job_id: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/jobs/{job_id}").json()
        if record["state"] in states:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)


def submit(client: TestClient, query: str, body: bytes, **headers: str) -> dict:
    resp = client.post(f"/jobs?{query}", content=body, headers=headers)
    assert resp.status_code == 202, resp.text
    record = resp.json()
    assert resp.headers["location"] == f"/jobs/{record['id']}"
    assert record["state"] in ("queued", "running", "done")
    return record


@pytest.mark.parametrize(
    ("query", "sync_path"),
    [
        ("op=enhance&alpha=2&format=webp", "/enhance?alpha=2&format=webp"),
        ("op=decompose&alpha=auto", "/decompose?alpha=auto"),
    ],
)
def test_job_result_is_byte_identical_to_the_synchronous_answer(client, query: str, sync_path: str) -> None:
    body = image_bytes(120, 80, seed=3)
    record = submit(client, query, body)
    done = wait_for(client, record["id"], ("done", "failed"))
    assert done["state"] == "done", done
    assert done["progress"]["done"] == done["progress"]["total"] > 1  # preview or tiles, then the rest
    result = client.get(done["links"]["result"])
    direct = client.post(sync_path, content=body)
    assert result.status_code == direct.status_code == 200
    assert result.content == direct.content
    assert result.headers["content-type"] == direct.headers["content-type"]
    for header in ("x-alpha", "etag", "x-model-version", "content-disposition"):
        assert result.headers.get(header) == direct.headers.get(header)


def test_prefer_respond_async_turns_enhance_into_a_job(client) -> None:
    body = image_bytes(60, 40)
    resp = client.post("/enhance?alpha=3", content=body, headers={"Prefer": "respond-async"})
    assert resp.status_code == 202
    assert resp.headers["preference-applied"] == "respond-async"
    record = resp.json()
    assert record["op"] == "enhance" and resp.headers["location"] == f"/jobs/{record['id']}"
    wait_for(client, record["id"], ("done",))
    assert client.get(f"/jobs/{record['id']}/result").content == client.post("/enhance?alpha=3", content=body).content


def test_progress_moves_with_an_eta_and_ends_at_the_total(make_settings, slow_compute) -> None:
    with TestClient(create_app(make_settings(max_batch_size=1))) as c:
        record = submit(c, "alpha=2", image_bytes(200, 140, seed=1))  # 64-px tiles: about a dozen items
        seen = []
        while record["state"] not in ("done", "failed"):
            record = c.get(f"/jobs/{record['id']}").json()
            seen.append(record)
            time.sleep(0.1)
    assert record["state"] == "done", record
    running = [r for r in seen if r["state"] == "running" and r["progress"]["total"]]
    dones = [r["progress"]["done"] for r in running]
    assert dones == sorted(dones), "progress never goes back"
    assert any(0 < r["progress"]["done"] < r["progress"]["total"] for r in running), "progress seen between"
    assert len(set(dones)) >= 3, dones
    assert all(r["eta_s"] is not None and r["eta_s"] >= 0 for r in running if r["progress"]["done"])
    assert record["progress"]["done"] == record["progress"]["total"] == running[-1]["progress"]["total"]
    assert record["started_at"] >= record["created_at"] and record["finished_at"] >= record["started_at"]


def test_cancel_drops_the_queued_work_and_frees_the_slot(make_settings, slow_compute) -> None:
    with TestClient(create_app(make_settings(max_batch_size=1, max_pending_requests=1))) as c:
        record = submit(c, "alpha=2", image_bytes(400, 300, seed=2))
        deadline = time.monotonic() + 30
        while c.get(f"/jobs/{record['id']}").json()["progress"]["done"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        batcher = c.app.state.batcher
        assert batcher.depth > 5 and batcher.pending == 1
        cancelled = c.delete(f"/jobs/{record['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        deadline = time.monotonic() + 5
        while batcher.pending or batcher.depth:
            assert time.monotonic() < deadline, (batcher.pending, batcher.depth)
            time.sleep(0.02)
        assert c.app.state.metrics.queue_depth._value.get() == 0
        assert c.post("/enhance?alpha=2", content=image_bytes()).status_code == 200  # the one slot is free again
        assert c.get(f"/jobs/{record['id']}").json()["state"] == "cancelled"
        assert_problem(c.get(f"/jobs/{record['id']}/result"), 409)


def test_unknown_malformed_and_unfinished_jobs(client, make_settings, slow_compute) -> None:
    assert_problem(client.get(f"/jobs/{'0' * 32}"), 404)
    assert_problem(client.get(f"/jobs/{'0' * 32}/result"), 404)
    assert_problem(client.delete(f"/jobs/{'0' * 32}"), 404)
    for path in ("/jobs/not-a-job-id", "/jobs/not-a-job-id/result", f"/jobs/{'A' * 32}"):
        assert_problem(client.get(path), 404)  # anything that is not a job's id
    assert_problem(client.delete("/jobs/not-a-job-id"), 404)
    record = submit(client, "alpha=2", image_bytes(300, 200))
    body = assert_problem(client.get(f"/jobs/{record['id']}/result"), 409)
    assert "poll" in body["detail"]


def test_a_bad_parameter_is_answered_at_once_not_as_a_job(client) -> None:
    body = assert_problem(client.post("/jobs?alpha=0", content=image_bytes()), 422)
    assert "0.1" in body["detail"]
    assert_problem(client.post("/jobs", content=b"not an image"), 415)


def test_jobs_expire_with_the_store_ttl(make_settings) -> None:
    with TestClient(create_app(make_settings(store_ttl_s=1))) as c:
        record = submit(c, "alpha=2", image_bytes(40, 30))
        wait_for(c, record["id"], ("done",))
        assert c.get(f"/jobs/{record['id']}/result").status_code == 200
        time.sleep(1.2)
        assert_problem(c.get(f"/jobs/{record['id']}"), 404)
        assert_problem(c.get(f"/jobs/{record['id']}/result"), 404)


def test_a_second_replica_answers_for_a_job_and_can_cancel_it(make_settings, redis_url, slow_compute) -> None:
    settings = make_settings(
        redis_url=redis_url, store_key="replicas-share-this-store-key-0123456789", max_batch_size=1
    )
    body = image_bytes(120, 90, seed=5)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        record = submit(a, "alpha=2", body)
        assert b.get(f"/jobs/{record['id']}").json()["id"] == record["id"]
        wait_for(b, record["id"], ("done",))
        assert b.get(f"/jobs/{record['id']}/result").content == a.post("/enhance?alpha=2", content=body).content

        long = submit(a, "alpha=2", image_bytes(400, 300, seed=6))
        deadline = time.monotonic() + 30
        while b.get(f"/jobs/{long['id']}").json()["progress"]["done"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert b.delete(f"/jobs/{long['id']}").json()["state"] == "cancelled"
        deadline = time.monotonic() + 5
        while a.app.state.batcher.pending or a.app.state.batcher.depth:  # the replica running it stopped it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert a.get(f"/jobs/{long['id']}").json()["state"] == "cancelled"
