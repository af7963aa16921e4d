"""Helper process for the kill -9 test: forks children that write training checkpoints in a tight loop.

The parent imports torch once and then, for each ``spawn`` line on stdin, forks a child that resumes from
the latest checkpoint in DIR (as training does) and saves step after step with
:func:`training.checkpoint.save_checkpoint` until it is killed; the parent prints the child's pid. ``reap
PID`` waits for that child and prints its raw wait status. Forking saves the ~3 s torch import per kill.

usage: python -m tests.reliability.checkpoint_writer DIR [MEGABYTES]
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from kind_serve.training.checkpoint import load_checkpoint, save_checkpoint


def write_forever(directory: str, elements: int) -> None:
    state = load_checkpoint(directory)
    step = int(state["step"]) if state else 0
    while True:
        step += 1
        # numpy fills the buffers: no torch thread pool in a forked child
        weights = torch.from_numpy(np.full(elements, step, dtype=np.float32))
        moments = torch.from_numpy(np.full(elements // 2, -step, dtype=np.float32))
        save_checkpoint({"step": step, "model": {"w": weights}, "optimizer": {"m": moments}}, directory)


def main(argv: list[str]) -> int:
    directory = argv[0]
    elements = int(float(argv[1] if len(argv) > 1 else 8) * 1e6 / 6)  # w + m/2 floats ≈ MEGABYTES
    for line in sys.stdin:
        command, *args = line.split()
        if command == "spawn":
            pid = os.fork()
            if pid == 0:
                try:
                    write_forever(directory, elements)
                finally:
                    os._exit(1)
            sys.stdout.write(f"{pid}\n")
        elif command == "reap":
            _, status = os.waitpid(int(args[0]), 0)
            sys.stdout.write(f"{status}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
