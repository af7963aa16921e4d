"""Fixtures shared by every test package: the read-only ../shared folder and small model bundles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import KinD

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (datasets, official weights); tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: these tests need the project's shared datasets and official weights")
    return SHARED


@pytest.fixture(scope="session")
def random_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint bundle of a randomly initialised KinD (seeded), saved once per session."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bundles") / "random"
    KinD(version="random-test").save(path, provenance={"data": "none: random weights for tests"})
    return path


@pytest.fixture(scope="session")
def official_kind(shared_dir: Path) -> KinD:
    """The authors' released weights (untrained restoration), eval mode, channels-last on CPU; do not modify."""
    official = shared_dir / "official-kind"
    if not (official / "kind_decom.npz").is_file():
        pytest.skip(f"{official} has no kind_decom.npz")
    return KinD.from_official(decom=official / "kind_decom.npz", illum=official / "kind_illum.npz").prepare("cpu")
