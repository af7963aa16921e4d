"""Asynchronous jobs: 202 + Location, progress and ETA, the result byte for byte, cancel, 404s, Redis replicas."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from kind_serve.service.app import create_app
from kind_serve.service.config import Limits
from kind_serve.service.worker import Worker

from .conftest import image_bytes, wait_for
from .test_service_api import assert_problem


@pytest.fixture
def slow_compute(monkeypatch) -> None:
    """Every batch takes at least 0.15 s more, so a job's progress can be watched."""
    original = Worker.compute

    def slow(self, key, batch, params):
        time.sleep(0.15)
        return original(self, key, batch, params)

    monkeypatch.setattr(Worker, "compute", slow)


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


def test_prefer_respond_async_turns_decompose_into_a_job(client) -> None:
    body = image_bytes(60, 40, seed=8)
    resp = client.post("/decompose?alpha=2", content=body, headers={"Prefer": "respond-async"})
    assert resp.status_code == 202 and resp.headers["preference-applied"] == "respond-async"
    record = resp.json()
    assert record["op"] == "decompose"
    wait_for(client, record["id"], ("done",))
    result = client.get(f"/jobs/{record['id']}/result")
    direct = client.post("/decompose?alpha=2", content=body)
    assert result.content == direct.content
    assert result.headers["content-disposition"] == direct.headers["content-disposition"]


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


TOKEN_A = "s3cret-token-0123456789"
TOKEN_B = "second-token-abcdefgh"


def test_a_client_holds_at_most_its_share_of_the_job_slots(make_settings, slow_compute) -> None:
    settings = make_settings(auth_tokens=[TOKEN_A, TOKEN_B], max_jobs=4, client_share=0.5)
    a, b = ({"authorization": f"Bearer {t}"} for t in (TOKEN_A, TOKEN_B))
    body = image_bytes(200, 140, seed=4)
    with TestClient(create_app(settings, Limits(job_workers=1))) as c:
        first = [submit(c, "alpha=2", body, **a) for _ in range(2)]
        refused = assert_problem(c.post("/jobs?alpha=2", content=body, headers=a), 429)
        assert refused["type"].endswith("client-share") and "share" in refused["detail"]
        [submit(c, "alpha=2", body, **b) for _ in range(2)]  # the other client still has its share
        assert_problem(c.post("/jobs?alpha=2", content=body, headers=b), 503)  # every slot taken
        assert c.delete(f"/jobs/{first[0]['id']}", headers=a).json()["state"] == "cancelled"
        submit(c, "alpha=2", body, **a)  # a cancel frees the slot at once
        text = c.get("/metrics", headers=a).text
    assert 'kind_failures_total{reason="draining"} 0.0' in text  # a cancel is not a shutdown


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_concurrent_submissions_never_exceed_the_job_limit(make_settings, slow_compute, backend, request) -> None:
    import concurrent.futures

    import httpx

    from .conftest import ThreadServer

    body = image_bytes(60, 40)
    store = {"redis_url": request.getfixturevalue("redis_url"), "store_key": "k" * 40} if backend == "redis" else {}
    settings = make_settings(max_jobs=6, client_share=1.0, **store)
    with ThreadServer(settings, Limits(job_workers=1)) as server, concurrent.futures.ThreadPoolExecutor(24) as pool:
        codes = list(
            pool.map(
                lambda _: httpx.post(f"{server.url}/jobs?alpha=2", content=body, timeout=60).status_code, range(24)
            )
        )
    assert codes.count(202) == 6 and set(codes) == {202, 503}, codes


def test_delete_of_a_finished_job_deletes_it_and_its_result(client) -> None:
    record = submit(client, "alpha=2", image_bytes(40, 30))
    wait_for(client, record["id"], ("done",))
    deleted = client.delete(f"/jobs/{record['id']}")
    assert deleted.status_code == 200 and deleted.json()["state"] == "done"
    assert_problem(client.get(f"/jobs/{record['id']}"), 404)
    assert_problem(client.get(f"/jobs/{record['id']}/result"), 404)
    assert_problem(client.delete(f"/jobs/{record['id']}"), 404)
    # an attempt that lost its lease and has not noticed yet writes its progress once more: still no job
    from kind_serve.service.jobs import write_record

    stale = {**deleted.json(), "state": "running", "finished_at": None, "client": ""}
    client.portal.call(write_record, client.app.state.store, stale)
    assert_problem(client.get(f"/jobs/{record['id']}"), 404)


def test_an_attempt_that_lost_its_lease_cannot_undo_the_jobs_end(client) -> None:
    from kind_serve.service.jobs import write_record

    body = image_bytes(40, 30)
    record = submit(client, "alpha=2", body)
    done = wait_for(client, record["id"], ("done",))
    # a replica that lost the job's lease writes its progress once more before its next renewal fails
    stale = {**done, "state": "running", "finished_at": None, "progress": {"done": 8, "total": 300}, "client": ""}
    client.portal.call(write_record, client.app.state.store, stale)
    assert client.get(f"/jobs/{record['id']}").json() == done
    result = client.get(f"/jobs/{record['id']}/result")
    assert result.status_code == 200 and result.content == client.post("/enhance?alpha=2", content=body).content


def test_a_lapsed_lease_is_taken_again_and_only_by_one_consumer() -> None:
    import asyncio

    asyncio.run(_lapsed_lease())


async def _lapsed_lease() -> None:
    from kind_serve.service.store import MemoryQueue

    now = [0.0]
    queue = MemoryQueue(clock=lambda: now[0])
    await queue.push("job1", "", "addr:x")
    first = await queue.take("a", lease_s=5, block_s=0)
    assert first is not None and first.job_id == "job1"
    assert await queue.take("b", lease_s=5, block_s=0) is None  # leased: nobody else gets it
    now[0] = 4.0
    assert await queue.renew(first)  # renewed at 4 s: now held until 9 s
    now[0] = 8.0
    assert await queue.take("b", lease_s=5, block_s=0) is None
    now[0] = 9.5
    second = await queue.take("b", lease_s=5, block_s=0)  # lapsed: the next consumer takes it over
    assert second is not None and second.job_id == "job1"
    assert not await queue.renew(first)  # the first taker learns it lost the job
    await queue.ack(first)  # and cannot acknowledge it
    now[0] = 100.0
    await queue.ack(second)
    assert await queue.take("c", lease_s=5, block_s=0) is None


def test_a_job_whose_replicas_kept_stopping_fails_with_the_reason(make_settings) -> None:
    import json

    from kind_serve.service.jobs import final_key, write_record

    with TestClient(create_app(make_settings(), Limits(job_max_attempts=2))) as c:
        record = submit(c, "alpha=2", image_bytes(40, 30))
        wait_for(c, record["id"], ("done",))
        state = c.app.state
        stored = json.loads(c.portal.call(state.store.get, final_key(record["id"])))
        # as if two replicas had taken it and died: its next start is one too many
        stored.update(state="running", attempts=2, finished_at=None, result=None)

        async def requeue() -> None:
            await state.store.delete(final_key(record["id"]))
            await write_record(state.store, stored)
            await state.jobs.queue.push(record["id"], "", stored["client"])

        c.portal.call(requeue)
        failed = wait_for(c, record["id"], ("failed",), timeout=10)
        assert failed["finished_at"] is not None and "started 2 times" in failed["error"]["detail"]
        result = assert_problem(c.get(f"/jobs/{record['id']}/result"), 503)
        assert result["type"].endswith("job-abandoned")
