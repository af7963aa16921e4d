"""Time plan and report for ``scripts/gpu_train.sh``: how many steps fit a stage's budget, and what was trained.

``steps``: after a short first leg of a stage, the steps the whole stage can reach within ``--budget`` seconds
at the speed that leg measured once running (its ``metrics.jsonl`` timestamps), less the leg's start-up and
evaluation time, which the second leg pays again; never more than the configured (paper) schedule.

``report``: the dev evaluations and the schedule actually trained — steps, samples, seconds, samples/s and the
share of the paper's schedule in pixels seen (``docs/kind-reference.md`` §4: decomposition 2000 epochs of 48²
crops, restoration 1000 epochs of 384² crops; adjustment taken as the decomposition's) — as one JSON.

    python scripts/gpu_plan.py steps RUN/decom/metrics.jsonl --done 150 --leg-seconds 30 --budget 90 --cap 14720
    python scripts/gpu_plan.py report --config configs/gpu.yaml --run RUN --seconds decom=90 ... \\
        --eval dev_paper=paper.json ... --out metrics.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAPER = {"decom": (2000, 48), "adjust": (2000, 48), "restore": (1000, 384)}  # (epochs, crop side)


def _records(metrics: Path) -> list[dict[str, Any]]:
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return [r for r in map(json.loads, lines) if "loss" in r]


def plan(metrics: Path, *, done: int, leg_seconds: float, budget: float, cap: int, safety: float = 0.9) -> int:
    """Total steps for the stage: ``done`` plus what the rest of ``budget`` holds at the measured speed."""
    rows = _records(metrics)
    if len(rows) >= 2 and rows[-1]["time"] > rows[0]["time"]:
        rate = (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"])
    else:
        rate = done / max(leg_seconds, 1e-9)
    overhead = max(leg_seconds - done / rate, 0.0)  # start-up, first batches, evaluation: paid again next leg
    more = math.floor(rate * max(budget - leg_seconds - overhead, 0.0) * safety)
    return min(cap, done + more)


def schedule(config: Path, overrides: list[str], run: Path, seconds: dict[str, float]) -> dict[str, Any]:
    from kind_serve.training.config import STAGES, load_config
    from kind_serve.training.data import load_pairs

    cfg = load_config(config, overrides)
    train_pairs = len(load_pairs(cfg.data, cfg.data_format, "train", cfg.pairs))
    out: dict[str, Any] = {"train_pairs": train_pairs, "device": cfg.device, "workers": cfg.workers}
    for stage in STAGES:
        sc, rows = cfg.stages[stage], _records(run / stage / "metrics.jsonl")
        steps = rows[-1]["step"] if rows else 0
        epochs, side = PAPER[stage]
        share = steps * sc.batch_size * sc.patch_size**2 / (epochs * train_pairs * side**2)
        rates = sorted(r["samples_per_s"] for r in rows[1:] or rows)
        out[stage] = {
            "steps": steps,
            "batch_size": sc.batch_size,
            "patch_size": sc.patch_size,
            "repeat": sc.repeat,
            "samples": steps * sc.batch_size,
            "drawn_samples": -(-steps // sc.repeat) * sc.batch_size,  # distinct crops: each serves `repeat` steps
            "seconds": round(seconds.get(stage, 0.0), 1),
            "samples_per_s_median": rates[len(rates) // 2] if rates else 0.0,
            "paper_share_of_pixels": float(f"{share:.3g}"),
        }
    return out


def _forward_flops(net: Callable[..., object], *inputs: object) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(*inputs)
    return float(counter.get_total_flops())


def speed(config: Path, overrides: list[str], seconds: float) -> list[str]:
    """Per stage: what one data worker draws per second, and the training FLOPs per sample on the GPU."""
    import platform
    import time

    import torch

    from kind_serve.model import KinD
    from kind_serve.training.config import STAGES, load_config
    from kind_serve.training.data import StepBatches, load_pairs

    torch.set_num_threads(1)
    cfg = load_config(config, overrides)
    pairs = load_pairs(cfg.data, cfg.data_format, "train", cfg.pairs)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = " ".join(f for f in ("avx2", "avx512f", "amx_tile") if f" {f}" in cpuinfo)
    lines = [f"cpu: {platform.machine()}, {os.cpu_count()} cores, flags: {flags or 'none of avx2/avx512f/amx_tile'}"]
    kind = KinD()
    for index, stage in enumerate(STAGES):
        sc = cfg.stages[stage]
        plan = StepBatches(pairs, sc.batch_size, sc.patch_size, cfg.noise, cfg.seed, index)
        for pair in pairs:  # decode every frame once, outside the timing (a worker's cache fills the same way)
            plan.cache[pair.low], plan.cache[pair.high]
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            plan[steps]
            steps += 1
        per_sample = (time.perf_counter() - start) / (steps * sc.batch_size)
        x = torch.rand(1, 3, sc.patch_size, sc.patch_size)
        r, l = kind.decom(x)
        decom = _forward_flops(kind.decom, x)
        trained = {
            "decom": decom,
            "adjust": _forward_flops(kind.adjustment, l, torch.ones(1)),
            "restore": _forward_flops(kind.restoration, r, l),
        }[stage]
        # two decompositions (low and high frame), then forward + backward (about 3 forwards) of the trained net
        flops = 6 * decom if stage == "decom" else 2 * decom + 3 * trained
        lines.append(
            f"{stage}: {sc.batch_size}x{sc.patch_size}², {per_sample * 1e3:.2f} ms/sample in one data worker "
            f"({1 / per_sample:.0f} samples/s, x{cfg.workers} workers {cfg.workers / per_sample:.0f}); "
            f"training {flops / 1e9:.2f} GFLOP/sample"
        )
    return lines


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{what} {item!r} must look like NAME=VALUE")
        out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    steps = sub.add_parser("steps", help="total steps that fit the stage's budget")
    steps.add_argument("metrics", type=Path)
    steps.add_argument("--done", type=int, required=True)
    steps.add_argument("--leg-seconds", type=float, required=True)
    steps.add_argument("--budget", type=float, required=True)
    steps.add_argument("--cap", type=int, required=True)
    steps.add_argument("--safety", type=float, default=0.9)
    bench = sub.add_parser("speed", help="data-worker speed and FLOPs per sample of each stage, on this CPU")
    bench.add_argument("--config", type=Path, default=Path("configs/gpu.yaml"))
    bench.add_argument("-o", dest="overrides", action="append", default=[])
    bench.add_argument("--seconds", type=float, default=5.0, help="timing per stage")
    report = sub.add_parser("report", help="evaluations and the trained schedule as one JSON")
    report.add_argument("--config", type=Path, required=True)
    report.add_argument("-o", dest="overrides", action="append", default=[])
    report.add_argument("--run", type=Path, required=True)
    report.add_argument("--seconds", action="append", default=[], help="STAGE=SECONDS")
    report.add_argument("--eval", action="append", default=[], help="NAME=kind-eval.json")
    report.add_argument("--protocol", default="")
    report.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "steps":
        total = plan(args.metrics, done=args.done, leg_seconds=args.leg_seconds, budget=args.budget, cap=args.cap)
        sys.stdout.write(f"{total}\n")
        return
    if args.command == "speed":
        sys.stdout.write("\n".join(speed(args.config, args.overrides, args.seconds)) + "\n")
        return
    seconds = {k: float(v) for k, v in _pairs(args.seconds, "--seconds").items()}
    merged: dict[str, Any] = {}
    for name, path in _pairs(args.eval, "--eval").items():
        data = json.loads(Path(path).read_text())
        merged[name] = data.get("results", data.get("dark"))
    merged["protocol"] = args.protocol
    merged["schedule"] = schedule(args.config, args.overrides, args.run, seconds)
    args.out.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
