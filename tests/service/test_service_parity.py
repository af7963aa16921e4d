"""The service gives the library's answer: shipped bundle, default settings, item by item in mixed batches.

The other service tests use a random model whose output is nearly flat, so a shifted, mis-padded or
wrongly-lit output still passes them. Here the shipped bundle runs on small textured images (50×30 is not a
multiple of the default size bucket of 32, so every request is padded) and the service's PNG is compared
pixel by pixel with :meth:`model.KinD.enhance` on the same image.
"""

from __future__ import annotations

import concurrent.futures
import io
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from kind_serve.model import KinD
from kind_serve.service.app import create_app
from kind_serve.service.config import Settings
from kind_serve.service.worker import Worker
from tests.servers import ThreadServer

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "kind-sice"
TIMEOUT = httpx.Timeout(60.0)


def textured(width: int, height: int, seed: int) -> Image.Image:
    """A dim photo-like image: smooth colour waves plus sharp-edged 6-px blocks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    waves = np.stack([np.sin(9 * xx + 3 * yy) ** 2, np.cos(7 * yy - 2 * xx) ** 2, xx * yy + 0.3], axis=-1)
    blocks = rng.random((height // 6 + 1, width // 6 + 1, 3)).repeat(6, 0).repeat(6, 1)[:height, :width]
    arr = 255 * (0.02 + 0.2 * (0.6 * waves + 0.4 * blocks))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def shipped_settings(**overrides: object) -> Settings:
    """Default settings (bucket_multiple 32 included) with the shipped bundle on the CPU, at the library's fp32."""
    settings = {"checkpoint": SHIPPED, "device": "cpu", "json_logs": False, "warmup": False, "precision": "fp32"}
    return Settings(**{**settings, **overrides})


@pytest.fixture(scope="module")
def library() -> KinD:
    return KinD.load(SHIPPED, device="cpu")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(shipped_settings())) as c:
        yield c


@pytest.mark.parametrize("alpha", ["3", "auto"])
def test_service_output_equals_the_library_at_default_settings(client: TestClient, library: KinD, alpha: str) -> None:
    image = textured(50, 30, seed=1)
    r = client.post("/enhance", params={"alpha": alpha}, content=png(image))
    assert r.status_code == 200, r.text
    expected = library.enhance(image, alpha=alpha)
    assert float(r.headers["X-Alpha"]) == pytest.approx(expected.alpha, rel=1e-3)
    got, want = pixels(r.content), np.asarray(expected.image, dtype=np.int16)
    assert got.shape == want.shape == (30, 50, 3)
    diff = np.abs(got - want)
    # padding at the bottom/right used to show as up to 60/255 there; a shift by the padding, far more
    assert diff.max() <= 1, (
        f"service vs library: max {diff.max()}/255, at (row, col) {np.argwhere(diff.max(-1) > 1)[:5]}"
    )


def test_tiled_service_output_equals_the_tiled_library_output(library: KinD) -> None:
    """200×150 in 128-px tiles: six tiles, each padded to the bucket, blended as the library blends them."""
    image = textured(200, 150, seed=2)
    with TestClient(create_app(shipped_settings(tile_size=128))) as c:
        r = c.post("/enhance", params={"alpha": "4"}, content=png(image))
    assert r.status_code == 200, r.text
    want = np.asarray(library.enhance(image, alpha=4.0, tile_size=128).image, dtype=np.int16)
    diff = np.abs(pixels(r.content) - want)
    assert diff.max() <= 1, f"tiled service vs library: max {diff.max()}/255"


class HeldWorker:
    """Wraps ``Worker.compute``: records batch sizes; the first enhance batch can hold the worker."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        original = Worker.compute
        held = self

        def compute(worker: Worker, key, batch, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            held.sizes.append(int(batch.shape[0]))
            if held.hold.is_set():
                held.hold.clear()
                held.entered.set()
                held.release.wait(60)
            return original(worker, key, batch, *args, **kwargs)

        monkeypatch.setattr(Worker, "compute", compute)


def queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    return float(re.search(r"^kind_queue_depth (\S+)$", text, re.M).group(1))


def enhance(url: str, body: bytes, alpha: str, image_id: str | None = None) -> httpx.Response:
    params = {"alpha": alpha} if image_id is None else {"alpha": alpha, "image_id": image_id}
    return httpx.post(f"{url}/enhance", params=params, content=body, timeout=TIMEOUT)


def test_a_batch_of_mixed_light_levels_gives_each_request_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four re-lightings of stored images at different α queued behind a held worker run as one batch of four;
    each answer must equal the same request run alone.

    α enters only the re-lighting step (the networks' parts are cached per stored image), so the images are
    stored and enhanced once first; the worker is then held on another image's networks while the four queue.
    """
    held = HeldWorker(monkeypatch)
    alphas = ["1.5", "3", "6", "12"]
    bodies = [png(textured(50, 30, seed=10 + i)) for i in range(len(alphas))]
    with ThreadServer(shipped_settings(max_batch_size=8)) as server:
        ids = [httpx.post(f"{server.url}/images", content=b, timeout=TIMEOUT).json()["id"] for b in bodies]
        for image_id in ids:  # computes and caches each image's parts
            assert enhance(server.url, b"", "2", image_id).status_code == 200
        with concurrent.futures.ThreadPoolExecutor(len(alphas) + 1) as pool:
            held.hold.set()
            # another size, so that the blocker's own re-lighting cannot join the batch
            blocker = pool.submit(enhance, server.url, png(textured(60, 40, seed=99)), "2")
            assert held.entered.wait(60)
            batched = [pool.submit(enhance, server.url, b"", a, i) for i, a in zip(ids, alphas, strict=True)]
            deadline = time.monotonic() + 60
            while queue_depth(server.url) < len(alphas) and time.monotonic() < deadline:
                time.sleep(0.02)
            before = len(held.sizes)
            held.release.set()
            assert blocker.result().status_code == 200
            batched = [f.result() for f in batched]
        assert held.sizes[before] == len(alphas), "the four requests did not run as one batch: nothing tested"
        alone = [enhance(server.url, b, a) for b, a in zip(bodies, alphas, strict=True)]
    means = []
    for alpha, together, single in zip(alphas, batched, alone, strict=True):
        assert together.status_code == single.status_code == 200
        assert together.headers["X-Alpha"] == single.headers["X-Alpha"] == f"{float(alpha):.4g}"
        diff = np.abs(pixels(together.content) - pixels(single.content))
        assert diff.max() <= 1, f"α = {alpha}: batched vs alone differ by up to {diff.max()}/255"
        means.append(pixels(together.content).mean())
    assert means == sorted(means), f"brighter with higher α: {means}"
