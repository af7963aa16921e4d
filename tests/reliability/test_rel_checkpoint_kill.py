"""Training durability: ``kill -9`` at random moments during checkpoint writes never leaves an unloadable one.

A helper process forks writers that resume from the latest checkpoint and save ~8 MB checkpoints in a tight
loop (see :mod:`tests.reliability.checkpoint_writer`); each is killed with SIGKILL after a random delay.
After every kill :func:`training.checkpoint.load_checkpoint` must return a complete, self-consistent state
whose step never goes backwards. Temp files left behind prove that kills did land in the middle of writes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kind_serve.training.checkpoint import load_checkpoint

from .conftest import REPO


def kill_writers(directory: Path, kills: int, seed: int) -> tuple[int, int]:
    """Kill ``kills`` writers at random moments, checking the checkpoint after each; (temp files, last step)."""
    rng = random.Random(seed)
    helper = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.checkpoint_writer", str(directory)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    last_step = interrupted = 0
    try:
        for _ in range(kills):
            helper.stdin.write("spawn\n")
            helper.stdin.flush()
            pid = int(helper.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.3))
            os.kill(pid, signal.SIGKILL)
            helper.stdin.write(f"reap {pid}\n")
            helper.stdin.flush()
            status = int(helper.stdout.readline())
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the writer died on its own"
            interrupted += any(directory.glob(".checkpoint.pt.*.tmp"))  # this kill hit a write in progress
            state = load_checkpoint(directory)  # raises on a torn file
            if state is None:  # killed before its first save finished: no checkpoint yet, also fine
                assert last_step == 0
                continue
            step = state["step"]
            w, m = state["model"]["w"], state["optimizer"]["m"]
            assert w.numel() > 0 and m.numel() == w.numel() // 2
            assert bool((w == step).all()) and bool((m == -step).all()), "a checkpoint mixes two steps"
            assert step >= last_step, "the latest checkpoint went back in time"
            last_step = step
    finally:
        helper.stdin.close()
        helper.wait(30)
    # each writer removes the temp files of writers killed before it: at most the last one's is left
    assert len(list(directory.glob(".checkpoint.pt.*.tmp"))) <= 1
    return interrupted, last_step


def check_coverage(kills: int, interrupted: int, last_step: int) -> None:
    """The kills must have hit both finished and unfinished writes, or the test proved nothing.

    How many of each depends on the machine's speed (a loaded disk makes writes longer), hence the loose bounds.
    """
    assert last_step >= 2, f"only {last_step} checkpoints completed in {kills} runs"
    assert interrupted >= kills // 10, f"only {interrupted} of {kills} kills hit a write in progress"


def test_kill_9_during_checkpoint_writes_never_leaves_an_unloadable_checkpoint(tmp_path: Path) -> None:
    kills = 30
    interrupted, last_step = kill_writers(tmp_path, kills, seed=6)
    check_coverage(kills, interrupted, last_step)


@pytest.mark.slow
def test_kill_9_soak(tmp_path: Path) -> None:
    interrupted, last_step = kill_writers(tmp_path, 300, seed=7)
    check_coverage(300, interrupted, last_step)
