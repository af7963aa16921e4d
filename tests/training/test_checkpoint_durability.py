"""Checkpoint writes are durable, not only atomic: the data reaches the disk before the rename publishes it.

A rename without a preceding fsync can, after a power loss, leave ``checkpoint.pt`` pointing at a file
whose blocks were never written (zero-length or torn), which ``kill -9`` tests cannot show: the page
cache survives a killed process. So the order of the system calls is checked directly.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from kind_serve.training.checkpoint import load_checkpoint, save_checkpoint


class SyscallLog:
    """Records fsync (inode, size, is a directory) and replace (source, destination) in call order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            info = os.fstat(fd)
            self.events.append(("fsync", info.st_ino, info.st_size, stat.S_ISDIR(info.st_mode)))
            real_fsync(fd)

        def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
            self.events.append(("replace", Path(src), Path(dst)))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)


def test_checkpoint_bytes_are_fsynced_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"step": 7, "model": {"w": torch.arange(10_000, dtype=torch.float32)}}
    log = SyscallLog(monkeypatch)
    final = save_checkpoint(state, tmp_path / "run")

    renames = [i for i, e in enumerate(log.events) if e[0] == "replace"]
    assert len(renames) == 1, log.events
    (rename,) = renames
    assert log.events[rename][2] == final
    written = final.stat()
    file_syncs = [e for e in log.events[:rename] if e[0] == "fsync" and e[1] == written.st_ino]
    assert file_syncs, "the checkpoint file is renamed into place without an fsync of its data"
    assert file_syncs[-1][2] == written.st_size, "fsync ran before all the bytes were written"
    directory = os.stat(final.parent).st_ino
    dir_syncs = [e for e in log.events[rename:] if e[0] == "fsync" and e[3] and e[1] == directory]
    assert dir_syncs, "the rename is not made durable: the directory is not fsynced after it"
    assert load_checkpoint(tmp_path / "run")["step"] == 7
