"""GPU latency, throughput and peak memory of the KinD pipeline per precision, batch and image size; JSON out.

    python tests/benchmarks/bench_gpu.py --json-out out/model.json          # on a CUDA machine
    python tests/benchmarks/bench_gpu.py --quick --json-out /tmp/model.json  # rehearsal on the CPU

Cases: 600×400 at batch 1 and 8 (the networks and composition on a normalised batch, channels-last, as the
service's worker runs them) and one 12-megapixel photo through :func:`model.recipe.enhance` (tiled at the
bundle's tile size, and whole where memory allows), each at fp32, fp16 and bf16 (autocast); fp16 batch 8
also without ``cudnn.benchmark`` and with ``torch.compile`` (CUDA graphs), each bounded by ``--budget-s``.
Timings: CUDA-synchronised wall time, median of ``--iters`` after warm-up calls; peak memory:
``torch.cuda.max_memory_allocated`` per case. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kind_serve.model import KinD, recipe  # noqa: E402
from kind_serve.model.light import LightLevel  # noqa: E402
from kind_serve.model.precision import cpu_native  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"first_call_s": round(first, 3), "median_s": round(statistics.median(times), 5), "peak_mib": peak}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json-out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes, one iteration: a rehearsal of the plumbing")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=200, help="skip the remaining cases past this")
    args = p.parse_args()
    device = torch.device(args.device)
    started = time.monotonic()
    iters, warmup = (1, 1) if args.quick else (args.iters, 3)
    small, large = ((96, 64), (256, 192)) if args.quick else ((600, 400), (4000, 3000))
    if device.type == "cuda":
        precisions = ["fp32", "fp16", "bf16"]
        info = {"name": torch.cuda.get_device_name(device), "capability": torch.cuda.get_device_capability(device)}
    else:
        precisions = ["fp32"] + (["bf16"] if cpu_native("bf16") else [])
        info = {"name": "cpu", "threads": torch.get_num_threads()}
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    kind = KinD().prepare(device)
    results: dict = {"device": str(device), "info": info, "torch": torch.__version__, "cases": []}

    def case(name: str, fn: Callable[[], object], images: int, **meta: object) -> None:
        if time.monotonic() - started > args.budget_s:
            results["cases"].append({"case": name, **meta, "skipped": "over --budget-s"})
            return
        try:
            r = measure(fn, device, iters, warmup)
            r["images_per_s"] = round(images / r["median_s"], 2)
        except Exception as exc:  # noqa: BLE001 - an out-of-memory or compiler failure is a result too
            r = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results["cases"].append({"case": name, **meta, **r})
        print(json.dumps(results["cases"][-1]), flush=True)  # noqa: T201

    w, h = small
    for precision in precisions:
        for batch in (1, 8):
            x = torch.rand(batch, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
            alpha = torch.full((batch,), 3.0, device=device)

            def run(x: torch.Tensor = x, alpha: torch.Tensor = alpha, precision: str = precision) -> object:
                with recipe.inference_context(device, precision):
                    return recipe.enhance_batch(kind, x, alpha, "photo", 1.0).float()

            case(f"{w}x{h} batch {batch}", run, batch, precision=precision, batch=batch, size=f"{w}x{h}")
            if batch == 8 and precision == ("fp16" if device.type == "cuda" else "fp32"):
                torch.backends.cudnn.benchmark = False
                case(f"{w}x{h} batch 8, cudnn.benchmark off", run, 8, precision=precision, batch=8)
                torch.backends.cudnn.benchmark = True
                compiled = torch.compile(
                    lambda x, a: recipe.enhance_batch(kind, x, a, "photo", 1.0),
                    mode="reduce-overhead" if device.type == "cuda" else "default",
                )

                def run_compiled(
                    x: torch.Tensor = x, alpha: torch.Tensor = alpha, fn: Callable = compiled, p: str = precision
                ) -> object:
                    with recipe.inference_context(device, p):
                        return fn(x, alpha).float()

                case(f"{w}x{h} batch 8, torch.compile", run_compiled, 8, precision=precision, batch=8)
    w, h = large
    image = torch.rand(1, 3, h, w) * 0.3
    for precision in precisions:
        for tile in (None, max(w, h)):  # the bundle's tiles, then the whole image in one piece
            label = f"tiles of {kind.defaults.tile_size}" if tile is None else "whole image"
            case(
                f"{w}x{h} enhance, {label}",
                lambda precision=precision, tile=tile: recipe.enhance(
                    kind, image, LightLevel(3.0), tile_size=tile, precision=precision, tiles_per_batch=4
                ),
                1,
                precision=precision,
                size=f"{w}x{h}",
            )
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
