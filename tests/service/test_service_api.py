"""/enhance end to end through TestClient: output, formats, caching headers, stored ids, errors, limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from kind_serve.model import KinD, recipe
from kind_serve.model.auto_alpha import preview
from kind_serve.model.normalise import span, stretch
from kind_serve.service.app import begin_drain, create_app
from kind_serve.service.config import Limits
from kind_serve.service.worker import Worker

from .conftest import decode, image_bytes

PROBLEM = "application/problem+json"


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


def test_enhance_returns_an_image_of_the_same_size_with_headers(client) -> None:
    r = client.post("/enhance", content=image_bytes(50, 30))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    out = decode(r.content)
    assert out.size == (50, 30) and out.mode == "RGB"
    assert r.headers["x-model-version"] == "test-random"
    assert 1.0 <= float(r.headers["x-alpha"]) <= 20.0
    assert r.headers["etag"].startswith('"')
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("size", [(40, 30), (150, 100)])  # whole image, and 64-pixel tiles batched together
def test_output_matches_the_model_run_in_process(make_settings, bundle, size) -> None:
    data = image_bytes(*size, seed=3)
    with TestClient(create_app(make_settings(), Limits(bucket_multiple=1))) as c:
        r = c.post("/enhance?alpha=2.5&mode=paper", content=data)
    assert r.status_code == 200
    kind = KinD.load(bundle)
    expected, _ = kind.enhance_tensor(
        torch.from_numpy(np.array(decode(data))).permute(2, 0, 1)[None].float() / 255, 2.5, "paper", tile_size=64
    )
    got = torch.from_numpy(np.array(decode(r.content))).permute(2, 0, 1)[None].float() / 255
    assert (got - expected).abs().max().item() <= 1.5 / 255


def test_auto_alpha_is_the_models_choice_and_reported(client, bundle) -> None:
    data = image_bytes(40, 30, seed=4)
    r = client.post("/enhance?alpha=auto", content=data)
    kind = KinD.load(bundle)
    x = torch.from_numpy(np.array(decode(data))).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        expected = kind.choose_alpha(preview(stretch(x)), span=float(span(x)))
    assert float(r.headers["x-alpha"]) == pytest.approx(expected, rel=1e-3)


def test_multipart_raw_and_stored_inputs_give_the_same_image(client) -> None:
    data = image_bytes(30, 20, seed=5)
    raw = client.post("/enhance?alpha=3", content=data)
    form = client.post("/enhance?alpha=3", files={"file": ("photo.png", data, "image/png")})
    image_id = client.post("/images", content=data).json()["id"]
    stored = client.post(f"/enhance?alpha=3&image_id={image_id}")
    assert raw.status_code == form.status_code == stored.status_code == 200
    assert raw.content == form.content == stored.content
    assert raw.headers["etag"] == form.headers["etag"] == stored.headers["etag"]


@pytest.mark.parametrize(
    ("query", "accept", "media"),
    [
        ("", None, "image/png"),
        ("", "image/jpeg", "image/jpeg"),
        ("", "image/webp;q=0.5, image/jpeg", "image/jpeg"),
        ("", "text/html, image/*;q=0.8", "image/png"),
        ("format=webp", "image/jpeg", "image/webp"),
        ("format=jpg", None, "image/jpeg"),
    ],
)
def test_output_format_negotiation(client, query, accept, media) -> None:
    headers = {"accept": accept} if accept else {}
    r = client.post(f"/enhance?alpha=2&{query}", content=image_bytes(), headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == media
    assert decode(r.content).size == (40, 30)


def test_unacceptable_accept_header_is_406(client) -> None:
    body = assert_problem(client.post("/enhance", content=image_bytes(), headers={"accept": "text/html"}), 406)
    assert "image/png" in body["detail"]


def test_etag_and_if_none_match(client) -> None:
    data = image_bytes(seed=6)
    first = client.post("/enhance?alpha=2", content=data)
    again = client.post("/enhance?alpha=2", content=data)
    other = client.post("/enhance?alpha=3", content=data)
    assert first.headers["etag"] == again.headers["etag"] != other.headers["etag"]
    batches = _metric(client, "kind_batch_size_count")
    cached = client.post("/enhance?alpha=2", content=data, headers={"if-none-match": first.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    assert _metric(client, "kind_batch_size_count") == batches  # no model work for a 304


def test_an_etag_does_not_survive_a_change_of_recipe(client, monkeypatch) -> None:
    """The same bundle can give another output after an upgrade of the recipe: a client's cached copy must not be
    confirmed with a 304 then."""
    data = image_bytes(seed=7)
    first = client.post("/enhance?alpha=2", content=data)
    monkeypatch.setattr(recipe, "REVISION", recipe.REVISION + "-next")
    after = client.post("/enhance?alpha=2", content=data, headers={"if-none-match": first.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != first.headers["etag"]
    assert after.headers["x-model-version"] == first.headers["x-model-version"]  # the bundle is the same


def _metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_exif_orientation_is_applied(client) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = image_bytes(40, 30, fmt="JPEG", exif=exif.tobytes())
    r = client.post("/enhance?alpha=2", content=data)
    assert decode(r.content).size == (30, 40)


def test_stored_image_round_trip_and_unknown_ids(client) -> None:
    data = image_bytes(seed=7)
    created = client.post("/images", files={"file": ("a.png", data, "image/png")})
    assert created.status_code == 201
    info = created.json()
    assert info["width"] == 40 and info["height"] == 30 and info["format"] == "png" and info["bytes"] == len(data)
    assert created.headers["location"] == info["links"]["image"]
    fetched = client.get(info["links"]["image"])
    assert fetched.content == data and fetched.headers["content-type"] == "image/png"
    assert client.post("/images", content=data).json()["id"] == info["id"]  # content-addressed
    assert_problem(client.get("/images/" + "0" * 64), 404)
    assert_problem(client.post("/enhance?image_id=" + "0" * 64), 404)
    assert_problem(client.get("/images/..%2F..%2Fetc%2Fpasswd"), 404)
    assert_problem(client.get("/images/" + "g" * 64), 422)


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("get", "/nowhere", 404),
        ("get", "/enhance", 405),
        ("delete", "/images", 405),
        ("post", "/enhance?alpha=abc", 422),
        ("post", "/enhance?alpha=0", 422),
        ("post", "/enhance?alpha=nan", 422),
        ("post", "/enhance?mode=cinema", 422),
        ("post", "/enhance?format=gif", 422),
        ("post", "/enhance?image_id=short", 422),
        ("get", "/decompose", 422),
    ],
)
def test_every_error_is_problem_json(client, method, url, status) -> None:
    assert_problem(getattr(client, method)(url, **({"content": image_bytes()} if method == "post" else {})), status)


def test_upload_limit_is_enforced_with_and_without_content_length(make_settings) -> None:
    with TestClient(create_app(make_settings(max_upload_bytes=2048))) as c:
        big = image_bytes(200, 200, seed=8)
        assert len(big) > 2048
        assert_problem(c.post("/enhance", content=big), 413)

        def chunks():
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        assert_problem(c.post("/enhance", content=chunks()), 413)  # chunked: counted while streaming
        assert_problem(c.post("/enhance", files={"file": ("a.png", big, "image/png")}), 413)
        assert c.get("/readyz").status_code == 200


def test_megapixel_limit(make_settings) -> None:
    with TestClient(create_app(make_settings(max_megapixels=0.001))) as c:
        body = assert_problem(c.post("/enhance", content=image_bytes(40, 30)), 413)
        assert "megapixels" in body["detail"]


def test_full_queue_answers_503_with_retry_after_at_once(make_settings) -> None:
    with TestClient(create_app(make_settings(max_pending_requests=1), Limits(retry_after_s=3))) as c:
        held = c.app.state.batcher.admit()
        r = c.post("/enhance", content=image_bytes())
        assert_problem(r, 503)
        assert r.headers["retry-after"] == "3"
        held.close()
        assert c.post("/enhance", content=image_bytes()).status_code == 200
        assert _metric(c, 'kind_failures_total{reason="queue_full"}') == 1


def test_requests_past_their_deadline_get_504(make_settings, monkeypatch) -> None:
    original = Worker.compute

    def slow(self, key, batch, alphas):
        import time

        time.sleep(0.5)
        return original(self, key, batch, alphas)

    monkeypatch.setattr(Worker, "compute", slow)
    with TestClient(create_app(make_settings(request_timeout_s=0.2))) as c:
        assert_problem(c.post("/enhance?alpha=2", content=image_bytes()), 504)


def test_a_failing_inference_fails_only_that_request(make_settings, monkeypatch) -> None:
    original = Worker.compute

    def flaky(self, key, batch, params):
        if any(light is not None and light.value == 7.0 for light, _ in params):
            raise RuntimeError("simulated kernel failure")
        return original(self, key, batch, params)

    monkeypatch.setattr(Worker, "compute", flaky)
    with TestClient(create_app(make_settings())) as c:
        body = assert_problem(c.post("/enhance?alpha=7", content=image_bytes()), 500)
        assert "simulated" not in body["detail"]  # internals stay in the logs
        assert c.post("/enhance?alpha=2", content=image_bytes()).status_code == 200
        assert c.get("/readyz").status_code == 200


def test_draining_refuses_new_work_and_turns_readiness_off(client) -> None:
    begin_drain(client.app)
    assert client.get("/readyz").status_code == 503
    assert client.get("/livez").status_code == 200
    assert_problem(client.post("/enhance", content=image_bytes()), 503)


def test_probes_and_metrics(client) -> None:
    assert client.get("/livez").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ok"
    client.post("/enhance?alpha=2", content=image_bytes())
    text = client.get("/metrics").text
    for needle in (
        'kind_requests_total{route="/enhance",status="200"} 1.0',
        "kind_queue_depth 0.0",
        "kind_queue_wait_seconds_count",
        'kind_compute_seconds_count{op="enhance"}',
        "kind_batch_size_count",
        'kind_images_processed_total{op="enhance"} 1.0',
        'kind_megapixels_processed_total{op="enhance"}',
        'kind_model_info{devices="cpu"',
        'kind_failures_total{reason="timeout"} 0.0',
    ):
        assert needle in text, needle


def test_request_id_is_echoed_or_generated(client) -> None:
    assert client.get("/livez", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/livez", headers={"x-request-id": "bad id\twith spaces"}).headers["x-request-id"]
    assert generated != "bad id\twith spaces" and len(generated) == 32


def test_openapi_documents_the_api_with_examples(client) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/enhance", "/images", "/images/{image_id}", "/decompose", "/decompose/{image_id}/all.zip", "/livez"):
        assert path in spec["paths"], path
    enhance = spec["paths"]["/enhance"]["post"]
    assert "multipart/form-data" in enhance["requestBody"]["content"]
    assert {"200", "406", "413", "503", "504"} <= set(enhance["responses"])
    assert "ProblemDetail" in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["StoredImage"]["examples"]
    alpha = next(p for p in enhance["parameters"] if p["name"] == "alpha")
    assert alpha["examples"]["auto"]["value"] == "auto" and alpha["schema"]["examples"]
