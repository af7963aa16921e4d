"""Fixtures of the model tests: the shipped bundle, loaded once per module on the CPU with one thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kind_serve.model import KinD

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "kind-sice"


@pytest.fixture(scope="module")
def kind() -> KinD:
    torch.set_num_threads(1)  # figures comparable across machines; the suite runs beside other work
    return KinD.load(SHIPPED, device="cpu")
