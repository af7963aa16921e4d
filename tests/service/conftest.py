"""Fixtures for the service tests: a random-weights bundle, settings, a TestClient, image bytes."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from kind_serve.model import InferenceDefaults
from kind_serve.service.app import create_app
from kind_serve.service.config import Settings
from tests.bundles import random_kind_bundle
from tests.servers import ThreadServer, free_port, start_redis

__all__ = ["ThreadServer", "free_port"]  # re-exported for the service tests


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the machine is shared; small images do not need more


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # small tiles so that test images of ~100 pixels already exercise tiling
    return random_kind_bundle(tmp_path_factory, "test-random", InferenceDefaults(tile_size=64, tile_overlap=16))


@pytest.fixture
def make_settings(bundle: Path):
    def make(**overrides: object) -> Settings:
        # fp32: outputs compare with the library's (precision=auto picks bf16 on CPUs that have it)
        base = {"checkpoint": bundle, "device": "cpu", "json_logs": False, "warmup": False, "precision": "fp32"}
        return Settings(**{**base, **overrides})

    return make


@pytest.fixture
def client(make_settings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as c:
        yield c


def image_bytes(
    width: int = 40, height: int = 30, fmt: str = "PNG", mode: str = "RGB", seed: int = 0, **save: object
) -> bytes:
    """A dark noisy test image encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((height, width, 3)) * 70).astype(np.uint8)
    image = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throw-away ``redis-server`` per test module, as a ``redis://`` URL."""
    port = free_port()
    proc = start_redis(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(
    client: TestClient, job_id: str, states: tuple[str, ...] = ("done", "failed"), timeout: float = 60
) -> dict:
    """The job's record once it is in one of ``states`` (polled; fails the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/jobs/{job_id}").json()
        if record["state"] in states:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
