"""Training throughput per stage (samples/s and ms/step) with the shipped recipe's batch and patch sizes.

    python tests/benchmarks/bench_training.py [--config configs/sice.yaml] [--steps 10] [--threads N] [--device cpu]

Each stage runs a few warm-up steps, then ``--steps`` timed steps of sample → loss → backward → Adam step on
real SICE pairs (noise synthesis included, as in training). Prints one line per stage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kind_serve.model import KinD  # noqa: E402
from kind_serve.training.config import STAGES, load_config  # noqa: E402
from kind_serve.training.data import ImageCache, batch_indices, load_pairs, sample_batch  # noqa: E402
from kind_serve.training.loop import stage_module  # noqa: E402
from kind_serve.training.stages import STAGES as SPECS  # noqa: E402
from kind_serve.training.stages import Nets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/sice.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    device = torch.device(args.device)
    pairs = load_pairs(cfg.data, cfg.data_format, "train", cfg.pairs)
    cache = ImageCache()
    sys.stdout.write(f"device={device} threads={args.threads} torch={torch.__version__}\n")
    for name in STAGES:
        sc = cfg.stages[name]
        kind = KinD().to(device, memory_format=torch.channels_last)
        trained = stage_module(kind, name)
        opt = torch.optim.Adam(trained.parameters(), lr=sc.lr)
        nets = Nets(kind.decom, kind.adjustment, kind.restoration)
        times = []
        for step in range(args.steps + 2):
            rng = np.random.default_rng([0, step])
            low, high = sample_batch(
                pairs, cache, batch_indices(len(pairs), step, sc.batch_size, 0), sc.patch_size, rng, cfg.noise
            )
            low, high = (t.to(device, memory_format=torch.channels_last) for t in (low, high))
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = SPECS[name].loss(nets, low, high, rng, cfg, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= 2:
                times.append(time.perf_counter() - t0)
        ms = 1000 * float(np.median(times))
        sys.stdout.write(
            f"{name:8s} batch {sc.batch_size:3d} × {sc.patch_size}²: {ms:8.1f} ms/step (median of {len(times)}), "
            f"{sc.batch_size / ms * 1000:7.1f} samples/s (compute only, data sampling excluded)\n"
        )


if __name__ == "__main__":
    main()
