"""On CUDA machines: one worker per device, GPU memory exported, output equal to the CPU service's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from kind_serve.service.app import create_app

from .conftest import decode, image_bytes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_workers_serve_and_export_gpu_memory(make_settings) -> None:
    data = image_bytes(150, 100, seed=41)
    with TestClient(create_app(make_settings(device="auto", precision="fp32"))) as gpu:
        r = gpu.post("/enhance?alpha=2", content=data)
        metrics = gpu.get("/metrics").text
    with TestClient(create_app(make_settings(device="cpu"))) as cpu:
        ref = cpu.post("/enhance?alpha=2", content=data)
    assert r.status_code == 200
    assert 'kind_gpu_memory_bytes{device="cuda:0",kind="peak"}' in metrics
    assert f'devices="{",".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))}"' in metrics
    diff = np.abs(np.asarray(decode(r.content), np.int16) - np.asarray(decode(ref.content), np.int16))
    assert diff.max() <= 2  # TF32/cuDNN vs CPU kernels


def test_auto_precision_on_a_gpu_is_fp16_and_close_to_fp32(make_settings) -> None:
    data = image_bytes(150, 100, seed=42)
    with TestClient(create_app(make_settings(device="cuda:0", precision="auto"))) as gpu:
        half = gpu.post("/enhance?alpha=2", content=data)
        ready = gpu.get("/readyz").json()
        metrics = gpu.get("/metrics").text
    with TestClient(create_app(make_settings(device="cuda:0", precision="fp32"))) as gpu:
        full = gpu.post("/enhance?alpha=2", content=data)
    assert half.status_code == full.status_code == 200
    expected = "fp16" if torch.cuda.get_device_capability(0) >= (7, 0) else "fp32"
    assert f'precision="{expected}"' in metrics and ready["detail"] is None
    diff = np.abs(np.asarray(decode(half.content), np.int16) - np.asarray(decode(full.content), np.int16))
    assert np.percentile(diff, 99) <= 2 and diff.max() <= 8
