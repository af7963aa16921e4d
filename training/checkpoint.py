"""Resumable training state, written atomically: temp file, fsync, rename, fsync the directory.

A ``kill -9`` at any moment leaves either the previous checkpoint or the new one, never a torn file.
Checkpoints load with ``weights_only=True``: nothing but tensors and plain containers is unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(state: dict[str, Any], directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / CHECKPOINT
    tmp = directory / f".{CHECKPOINT}.{os.getpid()}.tmp"
    for stale in directory.glob(f".{CHECKPOINT}.*.tmp"):  # left by writers killed mid-write
        if stale != tmp:
            stale.unlink(missing_ok=True)
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The latest checkpoint in ``directory``, or ``None`` when there is none."""
    path = Path(directory) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
