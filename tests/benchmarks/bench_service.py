"""Load benchmark of ``kind serve`` over HTTP on loopback (issue 4). Not a test: prints measured figures.

    .venv/bin/python tests/benchmarks/bench_service.py [--scale 0.125] [--duration 30]

One run measures, against a real uvicorn server started as a subprocess:

1. the model's own in-process batch throughput on the request mix (tiles grouped by size, batches of
   ``max_batch_size``, no HTTP, no decoding or encoding) — the reference, measured before and after the
   service phases because the machine is shared;
2. the service's saturated throughput (closed loop: ``--clients`` users send the whole mix once, back to
   back, so the batcher stays full and the workload equals (1)) and its ratio to (1) (goal ≥ 0.9);
3. batching on vs off (``max_batch_size`` 8 vs 1) at the same open-loop Poisson offered load
   (``--load`` × the saturated rate), same arrival times and images;
4. overload: Poisson arrivals at 2× the saturated rate: share and latency of the 503 rejections
   (goal: within 50 ms), p99 of the admitted requests, server RSS sampled every second (flat?).

Request mix: every image of ``../shared/datasets/real-lowlight`` (DICM, LIME, phone exposures from 512² to
3840×2160), downscaled by ``--scale`` (default 1/8, so that a 2-core CPU serves a few images a second) and
sent as JPEG (quality 92). The tile size is scaled the same way (768 → 128 px, overlap 16) so the large
phone images still arrive as several tiles that batch with other requests' tiles. α is fixed (3.0) so that
every batch is an enhancement batch. Torch runs ``--threads`` threads (default 1) in-process and in the server:
on a shared 2-core machine, OpenMP threads that get descheduled make multi-threaded timings erratic. Open-loop
phases last ``--duration`` seconds plus a bounded drain; closed-loop phases are bounded by the mix size.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "datasets" / "real-lowlight"
sys.path.insert(0, str(ROOT))

from kind_serve.model import KinD  # noqa: E402
from kind_serve.model.image import to_rgb, to_tensor  # noqa: E402
from kind_serve.model.normalise import stretch  # noqa: E402
from kind_serve.model.recipe import inference_context  # noqa: E402
from kind_serve.model.tiling import TileMerger, split_windows  # noqa: E402
from tests.servers import free_port, kind_serve, wait_ready  # noqa: E402

ALPHA = 3.0


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- workload ----------------------------------------------------------------------------------
def load_mix(scale: float, size: tuple[int, int] | None = None) -> list[bytes]:
    """The dataset's images downscaled by ``scale``, or all fitted (centre crop, resize) to ``size`` = (W, H)."""
    if not DATA.is_dir():
        raise SystemExit(f"dataset missing: {DATA}")
    bodies = []
    for path in sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")):
        with Image.open(path) as im:
            im = to_rgb(im)
            if size is None:
                small = im.resize((max(16, round(im.width * scale)), max(16, round(im.height * scale))), Image.BOX)
            else:
                small = ImageOps.fit(im, size, Image.Resampling.BOX)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=92)
        bodies.append(buf.getvalue())
    return bodies


def in_process_throughput(
    bundle: Path,
    bodies: list[bytes],
    tile: int,
    overlap: int,
    bucket: int,
    batch: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> float:
    """Images/s of the model alone on the same images, tiles of equal (padded) size batched together."""
    dev = torch.device(device)
    kind = KinD.load(bundle).prepare(dev)
    images = [stretch(to_tensor(Image.open(io.BytesIO(b)))) for b in bodies]

    def run(imgs: list[torch.Tensor]) -> None:
        groups: dict[tuple[int, int], list] = {}
        merges = []  # the blended outputs, kept as the server keeps its answers until encoded
        for s in imgs:
            h, w = s.shape[-2:]
            windows = split_windows(h, w, tile, overlap)
            merger = TileMerger(torch.empty(1, 3, h, w), windows, overlap)
            merges.append(merger)
            for win in windows:
                t = s[..., win.top : win.top + win.height, win.left : win.left + win.width]
                t = F.pad(t, (0, -t.shape[-1] % bucket, 0, -t.shape[-2] % bucket), mode="replicate")
                groups.setdefault(tuple(t.shape[-2:]), []).append((merger, win, t))
        with inference_context(dev, precision):
            for entries in groups.values():
                for i in range(0, len(entries), batch):
                    chunk = entries[i : i + batch]
                    x = torch.cat([e[2] for e in chunk]).to(dev, memory_format=torch.channels_last)
                    out = kind(x, ALPHA, "photo").float().cpu()
                    for (merger, win, _), o in zip(chunk, out, strict=True):
                        merger.add(win, o[None, :, : win.height, : win.width])

    run(images[::4])  # warm-up: oneDNN builds kernels per (batch, shape) on first use, as the server has by then
    start = time.perf_counter()
    run(images)
    return len(images) / (time.perf_counter() - start)


# -- server ------------------------------------------------------------------------------------
class Server:
    def __init__(self, bundle: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {"KIND_DEVICE": "cpu", "KIND_LOG_LEVEL": "WARNING", **env}
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - the server writes to it for its whole life
        self.proc = kind_serve(self.port, "--checkpoint", str(bundle), env=full_env, stdout=self.log, stderr=self.log)
        try:
            wait_ready(self.url, self.proc, timeout=120)
        except RuntimeError as exc:
            self.stop()
            self.log.seek(0)
            raise SystemExit(f"{exc}:\n" + self.log.read().decode(errors="replace")[-2000:]) from None

    def rss_mib(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024

    def batch_stats(self) -> tuple[float, ...]:
        """From the server's /metrics: items and batches so far, model busy seconds, /enhance 5xx ≤ 50 ms and all."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

        def value(name: str, **labels: str) -> float:
            return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

        five = {"route": "/enhance", "status_class": "5xx"}
        return (
            value("kind_batch_size_sum"),
            value("kind_batch_size_count"),
            value("kind_compute_seconds_sum", op="enhance"),
            value("kind_request_seconds_bucket", le="0.05", **five),
            value("kind_request_seconds_bucket", le="+Inf", **five),
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- load generation ---------------------------------------------------------------------------
async def _one(client: httpx.AsyncClient, body: bytes, results: list) -> None:
    start = time.perf_counter()
    try:
        r = await client.post(f"/enhance?alpha={ALPHA}", content=body, headers={"accept": "image/jpeg"})
        results.append((r.status_code, time.perf_counter() - start))
    except httpx.HTTPError as exc:
        results.append((type(exc).__name__, time.perf_counter() - start))


def _client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    return httpx.AsyncClient(base_url=url, timeout=120, limits=limits)


async def open_loop(url: str, bodies: list[bytes], rate: float, duration: float, seed: int, sampler=None) -> dict:
    """Poisson arrivals at ``rate``/s for ``duration`` s, independent of completions."""
    rng = random.Random(seed)
    results: list = []
    tasks = []
    async with _client(url) as client:
        start = time.perf_counter()
        t = 0.0
        while True:
            t += rng.expovariate(rate)
            if t > duration:
                break
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            tasks.append(asyncio.create_task(_one(client, rng.choice(bodies), results)))
            if sampler:
                sampler()
        await asyncio.wait(tasks, timeout=180)
        elapsed = time.perf_counter() - start
    return summarise(results, elapsed, offered=rate)


async def closed_loop(url: str, bodies: list[bytes], clients: int, seed: int) -> dict:
    """``clients`` users sending back to back until every body was sent once (in a shuffled order)."""
    order = list(bodies)
    random.Random(seed).shuffle(order)
    todo = iter(order)
    results: list = []
    async with _client(url) as client:
        start = time.perf_counter()

        async def user() -> None:
            for body in todo:  # shared iterator: each body once
                await _one(client, body, results)

        await asyncio.gather(*(user() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return summarise(results, elapsed)


def summarise(results: list, elapsed: float, offered: float | None = None) -> dict:
    ok = np.array([lat for status, lat in results if status == 200])
    rejected = np.array([lat for status, lat in results if status == 503])
    errors = sum(1 for status, _ in results if status not in (200, 503))

    def pct(a: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(a, q)) * 1000, 1) if a.size else None

    return {
        "offered_rps": offered,
        "sent": len(results),
        "ok": int(ok.size),
        "rejected_503": int(rejected.size),
        "errors": errors,
        "elapsed_s": round(elapsed, 1),
        "throughput_rps": round(ok.size / elapsed, 3),
        "p50_ms": pct(ok, 50),
        "p95_ms": pct(ok, 95),
        "p99_ms": pct(ok, 99),
        "reject_p50_ms": pct(rejected, 50),
        "reject_p99_ms": pct(rejected, 99),
        "reject_max_ms": round(float(rejected.max()) * 1000, 1) if rejected.size else None,
        "rejects_within_50ms": round(float((rejected <= 0.05).mean()), 3) if rejected.size else None,
    }


def with_batches(server: Server, before: tuple[float, ...], stats: dict) -> dict:
    total, count, busy, fast5xx, all5xx = server.batch_stats()
    stats["mean_batch_size"] = round((total - before[0]) / max(count - before[1], 1), 2)
    # model seconds per completed request: rises when the CPU is shared with other work
    stats["model_s_per_ok"] = round((busy - before[2]) / max(stats["ok"], 1), 3)
    stats["model_busy_fraction"] = round((busy - before[2]) / stats["elapsed_s"], 2)
    if all5xx > before[4]:  # the server's own view of its rejections, without the client's scheduling delays
        stats["server_5xx_within_50ms"] = round((fast5xx - before[3]) / (all5xx - before[4]), 3)
    return stats


def show(name: str, stats: dict) -> None:
    say(f"{name}: " + ", ".join(f"{k}={v}" for k, v in stats.items() if v is not None))


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "kind-sice")
    p.add_argument("--scale", type=float, default=0.125)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--duration", type=float, default=30.0, help="seconds per open-loop phase")
    p.add_argument("--load", type=float, default=0.7, help="offered load for on/off, × saturated rate")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--clients", type=int, default=12, help="closed-loop clients for the saturation phase")
    p.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in the server")
    p.add_argument("--device", default="cpu", help="cpu or cuda, in-process and in the server")
    p.add_argument("--precision", default="fp32", help="in-process and in the server (KIND_PRECISION)")
    p.add_argument("--uploads", type=lambda v: tuple(map(int, v.split("x"))), help="WxH: every image at this size")
    p.add_argument("--limit", type=int, default=0, help="only the first N images of the mix (0: all)")
    p.add_argument("--saturation-only", action="store_true", help="only the saturated ratio (skip open-loop phases)")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)

    bundle = Path(tempfile.mkdtemp()) / "bundle"
    try:  # a private copy: the shipped checkpoint may be re-exported while the benchmark runs
        KinD.load(args.checkpoint).save(bundle)
        say(f"checkpoint: {args.checkpoint}")
    except Exception as exc:  # any unloadable checkpoint: fall back, and say so
        KinD().save(bundle)
        say(f"{args.checkpoint} unusable ({exc}): using random weights (same cost per pixel)")
    torch.set_num_threads(args.threads)
    bodies = load_mix(args.scale, args.uploads)[: args.limit or None]
    sizes = [Image.open(io.BytesIO(b)).size for b in bodies]
    px = np.array([w * h for w, h in sizes])
    say(f"mix: {len(bodies)} images at scale {args.scale}: {px.min()}..{px.max()} px, mean {px.mean():.0f} px")
    say(f"torch threads: {args.threads} (in-process and server), load average {os.getloadavg()[0]:.2f}")
    env = {
        "KIND_TILE_SIZE": str(args.tile),
        "KIND_MAX_BATCH_SIZE": str(args.max_batch_size),
        "OMP_NUM_THREADS": str(args.threads),
        "KIND_DEVICE": args.device,
        "KIND_PRECISION": args.precision,
    }
    summary: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

    def reference() -> float:
        value = in_process_throughput(
            bundle, bodies, args.tile, args.overlap, 32, args.max_batch_size, args.device, args.precision
        )
        say(f"in-process model throughput: {value:.3f} images/s (load average {os.getloadavg()[0]:.2f})")
        return value

    refs = [reference()]

    server = Server(bundle, env)
    try:
        asyncio.run(closed_loop(server.url, bodies[::4], 4, seed=0))  # warm-up, as for the in-process reference
        before = server.batch_stats()
        sat = with_batches(server, before, asyncio.run(closed_loop(server.url, bodies, args.clients, seed=1)))
        show("saturated (closed loop, whole mix once)", sat)
        rate = sat["throughput_rps"]
        summary["saturated"] = sat
        if args.saturation_only:
            return finish(args, summary, refs, rate, reference)

        before = server.batch_stats()
        on = asyncio.run(open_loop(server.url, bodies, args.load * rate, args.duration, seed=2))
        summary["batching_on"] = with_batches(server, before, on)
        show(f"batching on  @ {args.load * rate:.2f} req/s", on)

        rss: list[float] = []
        last = [0.0]

        def sample() -> None:
            if time.monotonic() - last[0] >= 1.0:
                last[0] = time.monotonic()
                rss.append(server.rss_mib())

        before = server.batch_stats()
        over = asyncio.run(open_loop(server.url, bodies, 2 * rate, args.duration, seed=3, sampler=sample))
        over = with_batches(server, before, over)
        rss.append(server.rss_mib())
        over["rss_mib_first_mid_last_max"] = [round(rss[0]), round(rss[len(rss) // 2]), round(rss[-1]), round(max(rss))]
        summary["overload_2x"] = over
        show(f"overload     @ {2 * rate:.2f} req/s", over)
        after = asyncio.run(closed_loop(server.url, bodies[::8], 1, seed=4))
        summary["after_overload"] = after
        show("right after overload (1 client)", after)
    finally:
        server.stop()

    server = Server(bundle, {**env, "KIND_MAX_BATCH_SIZE": "1"})
    try:
        before = server.batch_stats()
        off = asyncio.run(open_loop(server.url, bodies, args.load * rate, args.duration, seed=2))
        summary["batching_off"] = with_batches(server, before, off)
        show(f"batching off @ {args.load * rate:.2f} req/s", off)
    finally:
        server.stop()

    return finish(args, summary, refs, rate, reference)


def finish(args: argparse.Namespace, summary: dict, refs: list[float], rate: float, reference) -> int:  # noqa: ANN001
    refs.append(reference())  # again, after the service phases: the machine is shared, load drifts
    ref = float(np.mean(refs))
    summary["in_process_rps"] = [round(r, 3) for r in refs]
    summary["saturated_vs_in_process"] = round(rate / ref, 3)
    say(f"saturated service / in-process model (mean of before and after) = {rate / ref:.3f} (goal >= 0.9)")
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2))
    say(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
