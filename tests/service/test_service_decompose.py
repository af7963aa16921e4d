"""Decomposition endpoints over a real uvicorn server with a real HTTP client (httpx + zipfile)."""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile

import httpx
import numpy as np
import pytest
import torch

from kind_serve.model import KinD, LightLevel, recipe
from kind_serve.service.worker import Worker

from .conftest import ThreadServer, decode, image_bytes
from .test_service_api import assert_problem


@pytest.fixture(scope="module")
def live(bundle):
    from kind_serve.service.config import Limits, Settings

    settings = Settings(checkpoint=bundle, device="cpu", json_logs=False, warmup=False)
    with ThreadServer(settings, Limits(bucket_multiple=1)) as server:
        yield server


def test_decompose_links_components_and_zip(live, bundle) -> None:
    data = image_bytes(40, 30, seed=21)
    with httpx.Client(base_url=live.url, timeout=30) as http:
        image_id = http.post("/images", content=data).json()["id"]
        r = http.get("/decompose", params={"image_id": image_id, "alpha": "2"})
        assert r.status_code == 200
        links = r.json()
        assert links["alpha"] == 2.0 and links["model_version"] == "test-random"
        assert set(links["components"]) == {"R", "L", "L_adj"}
        parts = {}
        for name, url in links["components"].items():
            got = http.get(url)
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            parts[name] = decode(got.content)
        assert parts["R"].mode == "RGB" and parts["L"].mode == "L" and parts["L_adj"].mode == "L"
        assert all(p.size == (40, 30) for p in parts.values())

        archive = http.get(links["all"])
        assert archive.headers["content-type"] == "application/zip"
        zf = zipfile.ZipFile(io.BytesIO(archive.content))
        assert sorted(zf.namelist()) == ["L.png", "L_adj.png", "R.png", "manifest.json"]
        assert zf.read("R.png") == http.get(links["components"]["R"]).content
        manifest = zf.read("manifest.json")
        assert b'"alpha": 2.0' in manifest and image_id.encode() in manifest

    # the components are the library's decomposition of the image (on the same canvas: model.tiling)
    kind = KinD.load(bundle)
    x = torch.from_numpy(np.array(decode(data))).permute(2, 0, 1)[None].float() / 255
    r_ref, l_ref, adj_ref, _ = recipe.decompose(kind, x, LightLevel(2.0))
    for name, ref in (("R", r_ref), ("L", l_ref), ("L_adj", adj_ref)):
        arr = np.asarray(parts[name], dtype=np.float32) / 255
        ref_arr = ref[0].permute(1, 2, 0).numpy().squeeze()
        assert np.abs(arr - ref_arr).max() <= 1.5 / 255, name


def test_decompose_without_alpha_has_no_adjusted_illumination(live) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as http:
        image_id = http.post("/images", content=image_bytes(seed=22)).json()["id"]
        links = http.get("/decompose", params={"image_id": image_id}).json()
        assert set(links["components"]) == {"R", "L"} and links["alpha"] is None
        assert_problem(http.get(f"/decompose/{image_id}/L_adj.png"), 422)
        assert_problem(http.get("/decompose", params={"image_id": "b" * 64}), 404)
        assert_problem(http.get(f"/decompose/{'b' * 64}/R.png"), 404)


def test_one_shot_decompose_upload_returns_the_zip(live) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as http:
        files = {"file": ("night.jpg", image_bytes(50, 20, fmt="JPEG", seed=23), "image/jpeg")}
        r = http.post("/decompose", params={"alpha": "auto"}, files=files)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert {"R.png", "L.png", "L_adj.png", "manifest.json"} == set(zf.namelist())
    assert decode(zf.read("L_adj.png")).size == (50, 20)


def test_disconnected_clients_queued_work_is_dropped(bundle, monkeypatch) -> None:
    from kind_serve.service.config import Settings

    seen: list[float] = []
    original = Worker.compute

    def slow(self, key, batch, alphas):
        seen.extend(a for a in alphas if a is not None)
        time.sleep(0.8)
        return original(self, key, batch, alphas)

    monkeypatch.setattr(Worker, "compute", slow)
    settings = Settings(checkpoint=bundle, device="cpu", json_logs=False, warmup=False)
    with ThreadServer(settings) as server:
        first = threading.Thread(
            target=lambda: httpx.post(f"{server.url}/enhance?alpha=2", content=image_bytes(), timeout=30)
        )
        first.start()
        time.sleep(0.3)  # the worker is now busy with the first request
        body = image_bytes(seed=24)
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            head = f"POST /enhance?alpha=3 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
            time.sleep(0.3)  # queued behind the first request; now the client gives up
        first.join(30)
        time.sleep(1.0)
        metrics = httpx.get(f"{server.url}/metrics").text
    assert 3.0 not in seen  # never reached the model
    assert 'kind_dropped_items_total{reason="disconnected"} 1.0' in metrics
