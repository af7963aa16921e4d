"""``quality=fast`` through the service: the library's fast path (model.multires), cached apart, reported.

What a client notices: a large photo asked for at ``quality=fast`` comes back as the library's fast result
(``X-Quality: fast``) from networks that saw a quarter of its pixels; its next α is re-lit from the fast parts,
and a full-quality request afterwards is not served from them; a small photo takes the full path whatever is
asked (``X-Quality: full``); a job takes the parameter too; an unknown quality is a 422 naming the choices.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from kind_serve.model import KinD, LightLevel, multires, recipe
from kind_serve.service.app import create_app
from kind_serve.service.worker import Worker

from .conftest import wait_for
from .test_service_parity import pixels, png, shipped_settings, textured
from .test_service_relight import networks_batches


@pytest.fixture
def large(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The shipped bundle, untiled, where anything above 10,000 pixels counts as a large photo."""
    monkeypatch.setattr(multires, "FAST_MIN_PIXELS", 10_000)
    with TestClient(create_app(shipped_settings(tile_size=1024))) as c:
        yield c


def test_a_fast_enhancement_is_the_librarys_fast_result_and_is_cached_apart(large: TestClient) -> None:
    image = textured(200, 160, seed=11)
    image_id = large.post("/images", content=png(image)).json()["id"]
    fast = large.post("/enhance", params={"image_id": image_id, "alpha": "3", "quality": "fast"})
    assert fast.status_code == 200, fast.text
    assert fast.headers["X-Quality"] == "fast"
    kind = KinD.load(shipped_settings().checkpoint, device="cpu")
    x = torch.from_numpy(pixels(png(image))).permute(2, 0, 1)[None].float() / 255
    want, _ = recipe.enhance(kind, x, LightLevel(3.0), precision="fp32", quality="fast")
    got = torch.from_numpy(pixels(fast.content)).permute(2, 0, 1)[None].float() / 255
    assert float((got - want).abs().max()) <= 2 / 255
    # the next α at the same quality: re-lit from the fast parts, no network work
    before = networks_batches(large)
    again = large.post("/enhance", params={"image_id": image_id, "alpha": "5", "quality": "fast"})
    assert again.status_code == 200 and again.headers["X-Quality"] == "fast"
    assert networks_batches(large) == before
    # full quality is not served from the fast parts
    full = large.post("/enhance", params={"image_id": image_id, "alpha": "3"})
    assert full.status_code == 200 and full.headers["X-Quality"] == "full"
    assert networks_batches(large) > before
    assert full.headers["ETag"] != fast.headers["ETag"]
    assert np.abs(pixels(full.content) - pixels(fast.content)).max() > 2


def test_the_fast_path_runs_the_networks_on_a_quarter_of_the_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []  # pixels of each canvas the networks ran on
    compute = Worker.compute

    def recording(worker: Worker, key, batch: torch.Tensor, params: list):  # noqa: ANN001, ANN202
        if key.op == "enhance":
            seen.append(batch.shape[-2] * batch.shape[-1])
        return compute(worker, key, batch, params)

    monkeypatch.setattr(Worker, "compute", recording)  # before the app starts its workers
    monkeypatch.setattr(multires, "FAST_MIN_PIXELS", 10_000)
    body = png(textured(240, 200, seed=12))
    with TestClient(create_app(shipped_settings(tile_size=1024, warmup=False))) as c:
        assert c.post("/enhance", params={"alpha": "3"}, content=body).status_code == 200
        assert c.post("/enhance", params={"alpha": "3", "quality": "fast"}, content=body).status_code == 200
    assert len(seen) == 2 and seen[1] <= 0.35 * seen[0]


def test_a_small_photo_takes_the_full_path_and_says_so(make_settings) -> None:
    with TestClient(create_app(make_settings())) as c:
        body = png(textured(120, 90, seed=13))
        fast = c.post("/enhance", params={"alpha": "3", "quality": "fast"}, content=body)
        full = c.post("/enhance", params={"alpha": "3"}, content=body)
    assert fast.status_code == 200 and fast.headers["X-Quality"] == "full"
    assert fast.content == full.content


def test_a_job_takes_the_quality(large: TestClient) -> None:
    body = png(textured(200, 160, seed=14))
    job = large.post("/jobs", params={"alpha": "3", "quality": "fast"}, content=body)
    assert job.status_code == 202, job.text
    record = wait_for(large, job.json()["id"])
    assert record["state"] == "done", record
    result = large.get(f"/jobs/{job.json()['id']}/result")
    assert result.status_code == 200 and result.headers["X-Quality"] == "fast"


def test_an_unknown_quality_is_a_422_naming_the_choices(make_settings) -> None:
    with TestClient(create_app(make_settings())) as c:
        r = c.post("/enhance", params={"quality": "best"}, content=png(textured(40, 30, seed=1)))
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "fast" in r.text and "full" in r.text
