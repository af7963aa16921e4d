"""Fixtures for the service tests: a random-weights bundle, settings, a TestClient, image bytes."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from model import InferenceDefaults, KinD
from service.app import create_app
from service.config import Settings


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the machine is shared; small images do not need more


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bundle") / "kind-random"
    # small tiles so that test images of ~100 pixels already exercise tiling
    KinD(InferenceDefaults(tile_size=64, tile_overlap=16), version="test-random").save(path)
    return path


@pytest.fixture
def make_settings(bundle: Path):
    def make(**overrides: object) -> Settings:
        base = {"checkpoint": bundle, "device": "cpu", "json_logs": False, "warmup": False}
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The app served by a real uvicorn on a loopback port, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
