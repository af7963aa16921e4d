"""Re-lighting stored images from cached parts (service.partcache): the output, the savings, the budget.

A stored image's second α must cost no network work (no ``enhance`` batch), give the uncached answer within
1/255 (shipped bundle, both modes, fixed and automatic α, tiled and not), and the cache must stay within its
byte budget however many photos are stored. ``/decompose`` and jobs use the same cache.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from kind_serve.model.parts import CHANNELS, Parts
from kind_serve.service.app import create_app
from kind_serve.service.metrics import Metrics
from kind_serve.service.partcache import PartsCache

from .conftest import image_bytes, wait_for
from .test_service_parity import pixels, png, shipped_settings, textured

PIXEL_BYTES = 2 * CHANNELS  # float16 parts


def metric(c: TestClient, name: str, **labels: str) -> float:
    text = c.get("/metrics").text
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{label}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def networks_batches(c: TestClient) -> float:
    return metric(c, "kind_compute_seconds_count", op="enhance")


@pytest.fixture(scope="module", params=[1024, 128], ids=["whole", "tiled"])
def shipped(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    with TestClient(create_app(shipped_settings(tile_size=request.param))) as c:
        yield c


@pytest.mark.parametrize("mode", ["photo", "paper"])
@pytest.mark.parametrize("alpha", ["5", "auto"])
def test_a_second_alpha_reuses_the_parts_and_gives_the_uncached_output(
    shipped: TestClient, mode: str, alpha: str
) -> None:
    body = png(textured(200, 150, seed=7))
    image_id = shipped.post("/images", content=body).json()["id"]
    first = shipped.post("/enhance", params={"image_id": image_id, "alpha": "2", "mode": mode})
    assert first.status_code == 200, first.text
    before = networks_batches(shipped)
    hits = metric(shipped, "kind_parts_cache_lookups_total", result="hit")
    cached = shipped.post("/enhance", params={"image_id": image_id, "alpha": alpha, "mode": mode})
    assert cached.status_code == 200, cached.text
    assert networks_batches(shipped) == before, "a second α ran the networks again"
    assert metric(shipped, "kind_parts_cache_lookups_total", result="hit") == hits + 1
    uncached = shipped.post("/enhance", params={"alpha": alpha, "mode": mode}, content=body)  # an upload: no cache
    assert networks_batches(shipped) > before
    assert cached.headers["X-Alpha"] == uncached.headers["X-Alpha"]
    assert cached.headers["X-Exposure-Gain"] == uncached.headers["X-Exposure-Gain"]
    diff = np.abs(pixels(cached.content) - pixels(uncached.content))
    assert diff.max() <= 1, f"cached vs uncached: {diff.max()}/255"


def test_exposure_gain_reports_how_much_lighter_the_output_is(shipped: TestClient) -> None:
    body = png(textured(120, 90, seed=8))
    r = shipped.post("/enhance", params={"alpha": "auto", "mode": "paper"}, content=body)
    assert r.status_code == 200, r.text
    weights = np.array([0.2125, 0.7154, 0.0721])
    ratio = (pixels(r.content) @ weights).mean() / (pixels(body) @ weights).mean()
    assert float(r.headers["X-Exposure-Gain"]) == pytest.approx(ratio, rel=0.02)
    assert float(r.headers["X-Exposure-Gain"]) > 2 * float(r.headers["X-Alpha"]) > 0  # the stretch did much


def test_the_cache_stays_within_its_budget_under_many_photos(make_settings) -> None:
    entry = (PIXEL_BYTES + 12) * 100 * 80  # float16 parts of a 100×80 image, and its float32 preview (the image)
    budget = 2 * entry + 10_000
    with TestClient(create_app(make_settings(parts_cache_bytes=budget))) as c:
        cache: PartsCache = c.app.state.parts_cache
        ids = [c.post("/images", content=image_bytes(100, 80, seed=s)).json()["id"] for s in range(6)]
        for image_id in ids:
            assert c.post("/enhance", params={"image_id": image_id, "alpha": "3"}).status_code == 200
            assert 0 < cache.used <= budget and metric(c, "kind_parts_cache_bytes") == cache.used
        assert len(cache) == 2
        misses = metric(c, "kind_parts_cache_lookups_total", result="miss")
        assert c.post("/enhance", params={"image_id": ids[-1], "alpha": "4"}).status_code == 200  # kept: the newest
        assert c.post("/enhance", params={"image_id": ids[0], "alpha": "4"}).status_code == 200  # evicted long ago
        assert metric(c, "kind_parts_cache_lookups_total", result="miss") == misses + 1
        assert cache.used <= budget


def test_no_budget_keeps_nothing(make_settings) -> None:
    with TestClient(create_app(make_settings(parts_cache_bytes=0))) as c:
        image_id = c.post("/images", content=image_bytes(60, 40)).json()["id"]
        for alpha in ("2", "3"):
            assert c.post("/enhance", params={"image_id": image_id, "alpha": alpha}).status_code == 200
        assert len(c.app.state.parts_cache) == 0 and networks_batches(c) >= 2


def _parts(pixels: int) -> Parts:
    """Parts of a 1×``pixels`` image: :data:`PIXEL_BYTES` a pixel, no preview."""
    return Parts(torch.zeros(1, CHANNELS, 1, pixels, dtype=torch.float16), 1.0, torch.zeros(0), 0.5)


def test_parts_cache_evicts_the_least_recently_used_and_refuses_what_cannot_fit() -> None:
    metrics = Metrics()
    cache = PartsCache(PIXEL_BYTES * 100, metrics)
    for key in "abc":
        assert cache.put(key, _parts(30))
    assert cache.get("a") is not None  # a is now the most recent
    assert cache.put("d", _parts(30))  # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("a") is not None and cache.used == PIXEL_BYTES * 90
    assert not cache.put("huge", _parts(101)) and cache.used == PIXEL_BYTES * 90
    assert cache.put("a", _parts(60))  # replacing an entry frees its old bytes first; then c goes
    assert cache.used == PIXEL_BYTES * 90 and cache.get("c") is None and cache.get("d") is not None
    assert metrics.parts_cache_bytes._value.get() == cache.used


def test_decompose_and_jobs_use_the_cached_parts(make_settings) -> None:
    with TestClient(create_app(make_settings())) as c:
        image_id = c.post("/images", content=image_bytes(100, 70, seed=3)).json()["id"]
        uncached = c.get(f"/decompose/{image_id}/R.png", params={"alpha": "3"})  # before any enhancement
        assert uncached.status_code == 200
        assert c.post("/enhance", params={"image_id": image_id, "alpha": "2"}).status_code == 200
        before = networks_batches(c), metric(c, "kind_compute_seconds_count", op="decompose")
        r = c.get(f"/decompose/{image_id}/R.png", params={"alpha": "4", "mode": "paper"})  # not in the store yet
        assert r.status_code == 200
        assert np.abs(pixels(r.content) - pixels(uncached.content)).max() <= 1
        job = c.post("/jobs", params={"image_id": image_id, "alpha": "5"})
        assert job.status_code == 202, job.text
        record = wait_for(c, job.json()["id"])
        assert record["state"] == "done", record
        result = c.get(f"/jobs/{job.json()['id']}/result")
        assert result.status_code == 200 and "x-exposure-gain" in result.headers
        after = networks_batches(c), metric(c, "kind_compute_seconds_count", op="decompose")
        assert after == before, "the decomposition or the job ran the networks again"


def test_the_demo_page_shows_the_exposure_gain(make_settings) -> None:
    with TestClient(create_app(make_settings())) as c:
        page, script = c.get("/").text, c.get("/demo/demo.js").text
    assert 'id="exposure"' in page
    assert 'headers.get("X-Exposure-Gain")' in script and '$("exposure").textContent' in script
