"""CPU benchmark of the KinD pipeline: per-stage latency, GFLOP/s against this machine's matmul limit, layouts and
precisions, and the peak memory of a tiled 12-megapixel image.

Run from the repository root::

    python tests/benchmarks/bench_model.py                 # all cores, everything
    python tests/benchmarks/bench_model.py --threads 1 --no-compile --no-rss

Every figure printed comes from this one run. Timings are the minimum over ``--repeats`` runs, with the variants
interleaved round by round so that other load on the machine (e.g. a training job) hits them alike; the machine's
core count and load average are printed so a reader can judge. The matmul limit is the time a large fp32 sgemm,
measured in the same run before and after the pipeline timings (best of both), needs for the pipeline's FLOPs.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model import KinD, retain_freed_memory  # noqa: E402
from model.compose import compose  # noqa: E402
from model.normalise import stretch  # noqa: E402

HEIGHT, WIDTH = 400, 600
ALPHA = 5.0
SGEMM_N = 4096


def out(message: str = "") -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall time and process CPU time (s) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def gflop(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def set_allocator(retain: bool) -> None:
    """glibc malloc either keeping freed memory (what the CLI does) or at its static defaults."""
    if retain:
        retain_freed_memory()
        return
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    for param, value in ((-3, 128 * 1024), (-1, 128 * 1024), (-2, 0)):  # mmap threshold, trim threshold, top pad
        mallopt(param, value)


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall time and best CPU time (s) of each variant, every variant once per round after a warm-up round.

    Variants whose name says "default allocator" run with glibc's defaults, the others with freed memory retained.
    """
    wall = dict.fromkeys(variants, math.inf)
    cpu = dict.fromkeys(variants, math.inf)
    for round_ in range(repeats + 1):
        for name, fn in variants.items():
            set_allocator(retain="default allocator" not in name)
            t, c = timed(fn)
            if round_:
                wall[name], cpu[name] = min(wall[name], t), min(cpu[name], c)
    set_allocator(retain=True)
    return wall, cpu


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def environment(threads: int) -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if "model name" in line), "?")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    out(f"machine: {platform.machine()} {model}, nproc={os.cpu_count()}, avx512_bf16={'avx512_bf16' in flags}")
    out(f"load average (1/5/15 min) before the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    out(f"torch {torch.__version__}, intra-op threads={threads}, mkldnn={torch.backends.mkldnn.is_available()}")


def latency(kind: KinD, args: argparse.Namespace) -> None:
    x = torch.rand(1, 3, HEIGHT, WIDTH)
    s = stretch(x).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        r, l = kind.decompose(s)
        r_hat = kind.restore(r, l)
        l_hat = kind.adjust(l, ALPHA)
        stages: dict[str, Callable[[], object]] = {
            "decompose": lambda: kind.decompose(s),
            "restore": lambda: kind.restore(r, l),
            "adjust": lambda: kind.adjust(l, ALPHA),
            "compose": lambda: compose(s, r, l, r_hat, l_hat, "photo", 1.0, ALPHA),
        }
        flops = {name: gflop(fn) for name, fn in stages.items()}
        total_gflop = gflop(lambda: kind(s, ALPHA, "photo"))
    out(f"\n== pipeline on one {WIDTH}x{HEIGHT} image, fp32, alpha={ALPHA}, photo mode ==")
    out(f"FLOPs (torch.utils.flop_counter): {total_gflop:.1f} GFLOP in total")
    a, b = torch.randn(SGEMM_N, SGEMM_N), torch.randn(SGEMM_N, SGEMM_N)
    nchw = copy.deepcopy(kind).to(memory_format=torch.contiguous_format)
    s_nchw = s.contiguous()
    with torch.inference_mode():
        # the sgemm runs in the same rounds as the pipeline, so both see the same machine load
        variants: dict[str, Callable[[], object]] = {"sgemm": lambda: a @ b}
        variants.update({f"stage {k}": v for k, v in stages.items()})
        variants["pipeline channels-last (shipped)"] = lambda: kind(s, ALPHA, "photo")
        variants["pipeline channels-last, default allocator"] = lambda: kind(s, ALPHA, "photo")
        variants["pipeline NCHW eager, default allocator"] = lambda: nchw(s_nchw, ALPHA, "photo")
        variants["enhance_tensor fp32"] = lambda: kind.enhance_tensor(x, ALPHA)
        variants["enhance_tensor fp32, auto alpha"] = lambda: kind.enhance_tensor(x, "auto")
        variants["enhance_tensor bf16 autocast"] = lambda: kind.enhance_tensor(x, ALPHA, precision="bf16")
        best, cpu = interleaved(variants, args.repeats)
        bf16, _ = kind.enhance_tensor(x, ALPHA, precision="bf16")
        fp32, _ = kind.enhance_tensor(x, ALPHA)
    peak = 2 * SGEMM_N**3 / best["sgemm"] / 1e9
    shipped = best["pipeline channels-last (shipped)"]
    limit = total_gflop / peak

    for name in stages:
        t = best[f"stage {name}"]
        out(f"  {name:10s} {t * 1e3:8.1f} ms  {flops[name]:7.2f} GFLOP  {flops[name] / t:6.1f} GFLOP/s")
    out(f"  {'sum':10s} {sum(best[f'stage {n}'] for n in stages) * 1e3:8.1f} ms")
    out(f"pipeline, channels-last eager (shipped path): {shipped * 1e3:.1f} ms = {total_gflop / shipped:.1f} GFLOP/s")
    default_alloc = best["pipeline channels-last, default allocator"]
    out(
        f"pipeline, same with glibc's default malloc:  {default_alloc * 1e3:.1f} ms "
        f"({default_alloc / shipped:.2f}x the shipped time; the CLI calls model.retain_freed_memory())"
    )
    nchw_t = best["pipeline NCHW eager, default allocator"]
    out(
        f"pipeline, plain NCHW eager, default malloc:   {nchw_t * 1e3:.1f} ms ({nchw_t / shipped:.2f}x the shipped time)"
    )
    out(
        f"fp32 sgemm {SGEMM_N}^3 (MKL, best of the same rounds): {peak:.1f} GFLOP/s -> matmul limit for "
        f"{total_gflop:.1f} GFLOP: {limit * 1e3:.1f} ms"
    )
    out(f"RATIO shipped / matmul limit: {shipped / limit:.2f}x (goal <= 1.25x)")
    # CPU time is what the run would take on an idle machine when it is single-threaded: other processes only
    # delay it; with several threads it also counts spinning and imbalance, so it is an upper bound
    cpu_peak = 2 * SGEMM_N**3 / (cpu["sgemm"] / args.threads) / 1e9
    cpu_shipped = cpu["pipeline channels-last (shipped)"] / args.threads
    out(
        f"by CPU time / threads: pipeline {cpu_shipped * 1e3:.1f} ms, sgemm {cpu_peak:.1f} GFLOP/s, "
        f"RATIO {cpu_shipped / (total_gflop / cpu_peak):.2f}x; NCHW eager "
        f"{cpu['pipeline NCHW eager, default allocator'] / cpu['pipeline channels-last (shipped)']:.2f}x, "
        f"default malloc {cpu['pipeline channels-last, default allocator'] / cpu['pipeline channels-last (shipped)']:.2f}x, "
        f"bf16 {cpu['enhance_tensor fp32'] / cpu['enhance_tensor bf16 autocast']:.2f}x faster"
    )
    fp = best["enhance_tensor fp32"]
    auto = best["enhance_tensor fp32, auto alpha"]
    out(
        f"enhance_tensor end to end (stretch, nets, output copy): {fp * 1e3:.1f} ms; with auto alpha {auto * 1e3:.1f} ms"
    )
    bf = best["enhance_tensor bf16 autocast"]
    out(
        f"enhance_tensor bf16 autocast: {bf * 1e3:.1f} ms ({fp / bf:.2f}x the fp32 speed), "
        f"PSNR vs fp32 {psnr(bf16, fp32):.1f} dB, max |diff| {float((bf16 - fp32).abs().max()):.4f}"
    )
    if args.compile:
        compiled(kind, s, args.repeats)


def compiled(kind: KinD, s: torch.Tensor, repeats: int) -> None:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # constant-folds weights so inductor can prepack them for oneDNN
    try:
        with torch.inference_mode():
            fn = torch.compile(kind)
            start = time.perf_counter()
            result = fn(s, ALPHA, "photo")
            compile_s = time.perf_counter() - start
            diff = float((result - kind(s, ALPHA, "photo")).abs().max())
            best, cpu = interleaved(
                {"eager": lambda: kind(s, ALPHA, "photo"), "compiled": lambda: fn(s, ALPHA, "photo")}, repeats
            )
    except Exception as exc:  # noqa: BLE001 - report any compiler failure instead of dying
        out(f"torch.compile: failed ({type(exc).__name__}: {str(exc)[:200]})")
        return
    out(
        f"torch.compile (inductor, freezing): first call {compile_s:.1f} s, then {best['compiled'] * 1e3:.1f} ms vs "
        f"eager {best['eager'] * 1e3:.1f} ms in the same rounds ({best['eager'] / best['compiled']:.2f}x), "
        f"max |diff| {diff:.1e}; by CPU time {cpu['eager'] / cpu['compiled']:.2f}x"
    )


def rss_child(width: int, height: int, tile: int | None) -> None:
    """Runs in a subprocess: enhance one random dark image as the CLI would, print peak RSS as JSON."""
    retain_freed_memory()
    kind = KinD().prepare("cpu")
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    image = (torch.rand(1, 3, height, width) * 0.3).mul(255).round().div(255)
    start = time.perf_counter()
    result, alpha = kind.enhance_tensor(image, "auto", tile_size=tile)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    json.dump(
        {
            "peak_kib": peak,
            "after_load_kib": after_load,
            "seconds": seconds,
            "alpha": alpha,
            "shape": list(result.shape),
        },
        sys.stdout,
    )


def memory(args: argparse.Namespace) -> None:
    width, height = 4000, 3000
    out(f"\n== peak RSS, {width}x{height} ({width * height / 1e6:.0f} MP) image, tiled, fp32, auto alpha ==")
    command = [sys.executable, __file__, "--rss-child", str(width), str(height), "--threads", str(args.threads)]
    if args.tile_size:
        command += ["--tile-size", str(args.tile_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        out(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
        return
    result = json.loads(done.stdout)
    tile = args.tile_size or KinD().defaults.tile_size
    out(
        f"tile {tile}px: peak RSS {result['peak_kib'] / 2**20:.2f} GiB (model loaded: "
        f"{result['after_load_kib'] / 2**20:.2f} GiB), {result['seconds']:.1f} s, alpha={result['alpha']} "
        f"(goal <= 3 GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile (~1 min)")
    parser.add_argument("--no-rss", dest="rss", action="store_false", help="skip the 12-megapixel memory run")
    parser.add_argument("--tile-size", type=int, default=None, help="tile size of the memory run (default: bundle's)")
    parser.add_argument("--rss-child", nargs=2, type=int, metavar=("W", "H"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(*args.rss_child, args.tile_size)
        return
    environment(args.threads)
    torch.manual_seed(0)
    kind = KinD().prepare("cpu")  # random weights: speed does not depend on their values
    latency(kind, args)
    if args.rss:
        memory(args)
    load = os.getloadavg()
    out(f"\nload average after the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")


if __name__ == "__main__":
    main()
