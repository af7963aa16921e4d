"""Image store: in-process LRU/TTL, a real redis-server shared by two app instances, and Redis down → 503."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from kind_serve.service.app import create_app
from kind_serve.service.config import Limits
from kind_serve.service.store import MemoryStore, RedisStore, StoreUnavailable
from tests.servers import start_redis

from .conftest import free_port, image_bytes
from .test_service_api import assert_problem


def test_memory_store_evicts_least_recently_used_by_bytes() -> None:
    async def run() -> None:
        store = MemoryStore(max_bytes=10, ttl_s=60)
        await store.put("a", b"aaaa")
        await store.put("b", b"bbbb")
        assert await store.get("a") == b"aaaa"  # a is now the most recently used
        await store.put("c", b"cccc")
        assert await store.get("b") is None
        assert await store.get("a") == b"aaaa" and await store.get("c") == b"cccc"
        assert store.used == 8
        with pytest.raises(StoreUnavailable):
            await store.put("huge", b"x" * 11)

    asyncio.run(run())


def test_memory_store_expires_entries() -> None:
    now = [0.0]

    async def run() -> None:
        store = MemoryStore(max_bytes=100, ttl_s=5, clock=lambda: now[0])
        await store.put("a", b"data")
        now[0] = 4.9
        assert await store.get("a") == b"data"
        now[0] = 5.1
        assert await store.get("a") is None
        assert store.used == 0

    asyncio.run(run())


def test_redis_store_round_trip_with_ttl(redis_url) -> None:
    async def run() -> None:
        store = RedisStore(redis_url, ttl_s=120, timeout_s=1)
        try:
            await store.put("k1", b"\x00binary\xff")
            assert await store.get("k1") == b"\x00binary\xff"
            assert await store.get("missing") is None
            assert 0 < await store._client.ttl("kind:k1") <= 120
        finally:
            await store.close()

    asyncio.run(run())


def test_two_replicas_share_images_through_redis(make_settings, redis_url) -> None:
    settings = make_settings(redis_url=redis_url, store_key="replicas-share-this-store-key-0123456789")
    data = image_bytes(seed=11)
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        image_id = one.post("/images", content=data).json()["id"]
        assert two.get(f"/images/{image_id}").content == data
        r = two.post(f"/enhance?alpha=2&image_id={image_id}")
        assert r.status_code == 200
        links = two.get(f"/decompose?image_id={image_id}").json()
        assert one.get(links["components"]["R"]).status_code == 200  # the decomposition is shared too


def test_redis_down_fails_store_routes_with_503_and_enhance_keeps_working(make_settings) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", store_key="k" * 40)
    with TestClient(create_app(settings, Limits(redis_timeout_s=0.5))) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/images", content=image_bytes())
        body = assert_problem(r, 503)
        assert "Redis" in body["detail"] and "retry-after" in r.headers
        assert_problem(c.get("/images/" + "a" * 64), 503)
        assert_problem(c.post("/enhance?image_id=" + "a" * 64), 503)
        assert c.post("/enhance?alpha=2", content=image_bytes()).status_code == 200
        assert 'kind_failures_total{reason="store_unavailable"} 3.0' in c.get("/metrics").text


def test_first_call_after_a_redis_restart_succeeds() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    async def call(store: RedisStore) -> None:
        await store.put("k", b"v")  # opens a pooled connection that the restart makes stale

    proc = start_redis(port)
    store = RedisStore(url, ttl_s=60, timeout_s=1)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(call(store))
        proc.terminate()
        proc.wait(10)
        proc = start_redis(port)
        loop.run_until_complete(call(store))  # no StoreUnavailable: the stale connection is retried once
        assert loop.run_until_complete(store.get("k")) == b"v"
    finally:
        loop.run_until_complete(store.close())
        loop.close()
        proc.terminate()
        proc.wait(10)
