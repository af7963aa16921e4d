"""Previews (``POST /enhance?preview=N``): the downscaled image's result, its parts cached under their own key.

A preview's longest side is at most N (aspect kept, never enlarged); a second α on it runs no networks; the
full image's parts are a separate entry; bad values are a 422 problem and the bounds are in the OpenAPI schema;
a preview is answered at once even when a job is preferred.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from kind_serve.service.app import create_app
from kind_serve.service.partcache import PartsCache
from kind_serve.service.routes.params import PREVIEW_MAX, PREVIEW_MIN

from .conftest import decode, image_bytes
from .test_service_relight import metric, networks_batches


@pytest.fixture
def c(make_settings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as client:
        yield client


def test_a_preview_is_downscaled_and_its_parts_are_kept_beside_the_full_images(c: TestClient) -> None:
    image_id = c.post("/images", content=image_bytes(300, 200, seed=5)).json()["id"]
    first = c.post("/enhance", params={"image_id": image_id, "alpha": "2", "preview": 128})
    assert first.status_code == 200, first.text
    assert decode(first.content).size == (128, 85)
    before, hits = networks_batches(c), metric(c, "kind_parts_cache_lookups_total", result="hit")
    again = c.post("/enhance", params={"image_id": image_id, "alpha": "4", "preview": 128})
    assert again.status_code == 200 and decode(again.content).size == (128, 85)
    assert networks_batches(c) == before, "a second α on the preview ran the networks again"
    assert metric(c, "kind_parts_cache_lookups_total", result="hit") == hits + 1

    full = c.post("/enhance", params={"image_id": image_id, "alpha": "4"})
    assert full.status_code == 200 and decode(full.content).size == (300, 200)
    assert networks_batches(c) > before, "the full image was answered from the preview's parts"
    assert full.headers["ETag"] != again.headers["ETag"]
    cache: PartsCache = c.app.state.parts_cache
    assert len(cache) == 2
    # lit like the full image: the same α, about the same brightening
    assert again.headers["X-Alpha"] == full.headers["X-Alpha"]
    assert float(again.headers["X-Exposure-Gain"]) == pytest.approx(float(full.headers["X-Exposure-Gain"]), rel=0.1)
    etag = again.headers["ETag"]
    cached = c.post(
        "/enhance", params={"image_id": image_id, "alpha": "4", "preview": 128}, headers={"If-None-Match": etag}
    )
    assert cached.status_code == 304


def test_a_preview_no_smaller_than_the_image_is_the_image_itself(c: TestClient) -> None:
    image_id = c.post("/images", content=image_bytes(100, 80, seed=6)).json()["id"]
    full = c.post("/enhance", params={"image_id": image_id, "alpha": "3"})
    preview = c.post("/enhance", params={"image_id": image_id, "alpha": "3", "preview": 100})
    assert preview.status_code == 200, preview.text
    assert decode(preview.content).size == (100, 80)
    assert decode(preview.content).tobytes() == decode(full.content).tobytes()


def test_an_uploads_preview_is_computed_and_not_kept(c: TestClient) -> None:
    r = c.post("/enhance", params={"alpha": "auto", "preview": 64}, content=image_bytes(90, 160, seed=7))
    assert r.status_code == 200, r.text
    assert decode(r.content).size == (36, 64)
    assert len(c.app.state.parts_cache) == 0


@pytest.mark.parametrize("value", ["0", str(PREVIEW_MIN - 1), str(PREVIEW_MAX + 1), "abc", "1.5", "-5", ""])
def test_a_bad_preview_is_a_422_problem(c: TestClient, value: str) -> None:
    r = c.post("/enhance", params={"alpha": "2", "preview": value}, content=image_bytes())
    assert r.status_code == 422, r.text
    problem = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert problem["type"].endswith("invalid-request") and "preview" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["query", "preview"]


def test_the_preview_parameter_is_in_the_openapi_schema(c: TestClient) -> None:
    operation = c.get("/openapi.json").json()["paths"]["/enhance"]["post"]
    (param,) = [p for p in operation["parameters"] if p["name"] == "preview"]
    assert param["in"] == "query" and not param.get("required", False)
    integer = next(s for s in param["schema"]["anyOf"] if s.get("type") == "integer")
    assert (integer["minimum"], integer["maximum"]) == (PREVIEW_MIN, PREVIEW_MAX)
    assert "longest side" in param["description"] and "preview=N" in operation["description"]


def test_a_preview_is_answered_at_once_when_a_job_is_preferred(c: TestClient) -> None:
    image_id = c.post("/images", content=image_bytes(200, 150, seed=8)).json()["id"]
    r = c.post(
        "/enhance",
        params={"image_id": image_id, "alpha": "2", "preview": 64},
        headers={"Prefer": "respond-async"},
    )
    assert r.status_code == 200, r.text
    assert decode(r.content).size == (64, 48)
