"""A 12-megapixel phone photo through POST /enhance on the CPU with the default settings (slow; CI runs it).

The shipped checkpoint, warm-up and speed calibration as ``kind serve`` does them; the answer must be the
enhanced photo, not a 504 after minutes of work nor a refusal (the defaults admit 12 MP on a CPU).
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from kind_serve.service.app import create_app
from kind_serve.service.config import Settings
from tests.photos import phone_photo


@pytest.fixture
def all_cores() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # as `kind serve` runs without OMP_NUM_THREADS: every core
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_12_megapixel_photo_is_enhanced_on_the_cpu_with_the_defaults(all_cores) -> None:
    body = phone_photo(4000, 3000)
    with TestClient(create_app(Settings(device="cpu", json_logs=False))) as client:
        start = time.perf_counter()
        resp = client.post("/enhance?alpha=auto", content=body)
        elapsed = time.perf_counter() - start
        speed = client.app.state.batcher.workload.speed.snapshot()
    print(f"12 MP through POST /enhance: {resp.status_code} in {elapsed:.1f} s; learned s/MP {speed}")
    assert resp.status_code == 200, resp.text
    out = Image.open(io.BytesIO(resp.content))
    assert out.size == (4000, 3000)
    before = np.asarray(Image.open(io.BytesIO(body)).convert("L"), dtype=np.float32).mean()
    after = np.asarray(out.convert("L"), dtype=np.float32).mean()
    assert after > before + 10, (before, after)
