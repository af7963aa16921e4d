"""Bundles of a seeded, randomly initialised KinD for the tests: real files, untrained weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kind_serve.model import InferenceDefaults, KinD


def random_kind_bundle(
    tmp_path_factory: pytest.TempPathFactory,
    version: str,
    defaults: InferenceDefaults | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Save ``KinD(defaults, version=version)`` seeded with 0 into a fresh temporary folder; the bundle's path."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(version) / "kind-random"
    sections = {} if provenance is None else {"provenance": provenance}
    KinD(defaults, version=version).save(path, **sections)
    return path
