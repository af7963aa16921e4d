"""Overload: 10× the saturated request rate for 60 s against a real ``kind serve`` on loopback.

    python tests/benchmarks/bench_overload.py [--checkpoint DIR] [--size 256x192] [--factor 10] [--duration 60]
                                              [--saturate-s 30] [--threads 1] [--json-out FILE]

1. starts ``kind serve`` (default settings: 16 admitted requests, then 503) on a random-weights bundle unless
   ``--checkpoint`` names one (same networks, so the same compute per image);
2. measures an idle probe's latency, then the saturated throughput X with a closed loop of 16 clients;
3. offers Poisson arrivals at ``factor`` × X for ``duration`` seconds (open loop; client tasks are capped so
   the generator itself stays bounded) while sampling the server's RSS from /proc every 0.25 s;
4. waits for the admitted requests, then probes again right away.

Prints: admitted / rejected / other counts, admitted throughput and latency, rejection latency (p50/p99/max),
RSS before / peak / after, the probe latency after vs. before, and the machine's load average. Exits 1 when
an admitted request failed, a response was neither 200 nor 503, or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.servers import free_port, kind_serve, wait_ready  # noqa: E402

CLIENT_CAP = 2000  # most client requests open at once; arrivals beyond it are counted, not sent


@dataclass
class Outcome:
    status: int  # 0: transport error
    latency: float
    error: str = ""


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: int = 0


def image_bytes(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    arr = (rng.random((height, width, 3)) * 60).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def compute_per_item(client: httpx.AsyncClient) -> tuple[float, float]:
    """The server's own model time: (seconds summed over batches, batches) of the enhance op."""
    text = (await client.get("/metrics")).text
    values = {}
    for line in text.splitlines():
        if line.startswith(('kind_compute_seconds_sum{op="enhance"}', 'kind_compute_seconds_count{op="enhance"}')):
            values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return values.get("kind_compute_seconds_sum", 0.0), values.get("kind_compute_seconds_count", 0.0)


class Phase:
    """Wall time, server CPU time and server model time over one phase of the benchmark."""

    def __init__(self, pid: int, client: httpx.AsyncClient) -> None:
        self.pid, self.client = pid, client

    async def __aenter__(self) -> Phase:
        self.wall, self.cpu = time.monotonic(), cpu_seconds(self.pid)
        self.compute = await compute_per_item(self.client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.wall
        cpu = cpu_seconds(self.pid) - self.cpu
        total, batches = await compute_per_item(self.client)
        self.summary = {
            "wall_s": round(wall, 1),
            "server_cpu_per_wall_s": round(cpu / wall, 2),
            "model_ms_per_batch": round((total - self.compute[0]) / max(batches - self.compute[1], 1) * 1000, 1),
        }


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def one(client: httpx.AsyncClient, body: bytes) -> Outcome:
    start = time.perf_counter()
    try:
        r = await client.post("/enhance", params={"alpha": "3"}, content=body, headers={"content-type": "image/png"})
        return Outcome(r.status_code, time.perf_counter() - start)
    except httpx.HTTPError as exc:
        return Outcome(0, time.perf_counter() - start, type(exc).__name__)


async def closed_loop(client: httpx.AsyncClient, body: bytes, clients: int, seconds: float) -> float:
    """Completed requests per second with ``clients`` back-to-back clients (the saturated rate).

    The clients run for ``seconds`` after a warm-up of ``seconds / 2``; only completions after the warm-up
    count, so the pipeline is full over the whole measured window.
    """
    begin = time.monotonic() + seconds / 2
    end = begin + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            if (await one(client, body)).status == 200 and begin <= time.monotonic() <= end:
                done += 1

    await asyncio.gather(*(worker() for _ in range(clients)))
    return done / seconds


async def open_loop(client: httpx.AsyncClient, body: bytes, rate: float, seconds: float, seed: int) -> Run:
    """Poisson arrivals at ``rate`` per second for ``seconds``; waits for every request it sent."""
    rng = random.Random(seed)
    run = Run()
    tasks: set[asyncio.Task] = set()
    start = time.monotonic()
    next_at = start
    while next_at < start + seconds:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if len(tasks) >= CLIENT_CAP:
            run.skipped += 1
        else:
            task = asyncio.create_task(one(client, body))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), run.outcomes.append(t.result())))
        next_at += rng.expovariate(rate)
    while tasks:
        await asyncio.sleep(0.05)
    return run


async def sample_rss(pid: int, samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    start = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - start, rss_mib(pid)))
        await asyncio.sleep(0.25)


def window_peaks(samples: list[tuple[float, float]], width: float) -> list[float]:
    """Peak RSS per ``width``-second window: flat peaks = bounded memory under sustained overload."""
    peaks: dict[int, float] = {}
    for t, rss in samples:
        peaks[int(t // width)] = max(peaks.get(int(t // width), 0.0), rss)
    return [round(peaks[k]) for k in sorted(peaks)]


async def probe(client: httpx.AsyncClient, body: bytes, n: int = 5) -> list[float]:
    latencies = []
    for _ in range(n):
        out = await one(client, body)
        if out.status != 200:
            raise RuntimeError(f"probe failed with status {out.status} {out.error}")
        latencies.append(out.latency)
    return latencies


def start_server(checkpoint: Path, port: int, threads: int) -> subprocess.Popen:
    env = {"KIND_DEVICE": "cpu", "OMP_NUM_THREADS": str(threads), "KIND_LOG_LEVEL": "WARNING"}
    return kind_serve(port, "--checkpoint", str(checkpoint), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def random_bundle(directory: Path) -> Path:
    import torch

    from kind_serve.model import KinD

    torch.manual_seed(0)
    KinD(version="bench-random").save(directory / "random")
    return directory / "random"


async def bench(args: argparse.Namespace, url: str, pid: int) -> dict:
    width, height = (int(v) for v in args.size.split("x"))
    body = image_bytes(width, height)
    limits = httpx.Limits(max_connections=CLIENT_CAP, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0), limits=limits) as client:
        await probe(client, body, 3)  # warm-up
        before = await probe(client, body)
        rss_idle = rss_mib(pid)
        async with Phase(pid, client) as saturation:
            saturated = await closed_loop(client, body, 16, args.saturate_s)
        rate = args.factor * saturated
        samples: list[tuple[float, float]] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(pid, samples, stop))
        t0 = time.monotonic()
        async with Phase(pid, client) as overload:
            run = await open_loop(client, body, rate, args.duration, seed=0)
        elapsed = time.monotonic() - t0
        after = await probe(client, body)
        stop.set()
        await sampler
        ready = (await client.get("/readyz")).status_code
        metrics = (await client.get("/metrics")).text
    ok = [o.latency for o in run.outcomes if o.status == 200]
    rejected = [o.latency for o in run.outcomes if o.status == 503]
    other: dict[str, int] = {}
    for o in run.outcomes:
        if o.status not in (200, 503):
            key = str(o.status) if o.status else o.error
            other[key] = other.get(key, 0) + 1
    return {
        "image": f"{width}x{height}",
        "saturated_rps": saturated,
        "offered_rps": rate,
        "duration_s": args.duration,
        "sent": len(run.outcomes),
        "skipped_by_client_cap": run.skipped,
        "admitted_ok": len(ok),
        "rejected_503": len(rejected),
        "other": other,
        "admitted_rps": len(ok) / elapsed,
        "admitted_ms": {"p50": pct(ok, 50), "p99": pct(ok, 99), "max": pct(ok, 100)},
        "rejection_ms": {"p50": pct(rejected, 50), "p99": pct(rejected, 99), "max": pct(rejected, 100)},
        "rss_mib": {
            "idle": rss_idle,
            "peak": max(rss for _, rss in samples),
            "end": samples[-1][1],
            "samples": len(samples),
            "peak_per_15s": window_peaks(samples, 15.0),
        },
        "probe_ms_before": [round(x * 1000, 1) for x in before],
        "probe_ms_after": [round(x * 1000, 1) for x in after],
        "readyz_after": ready,
        "server_failures": {
            line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("kind_failures_total{") and not line.endswith(" 0.0")
        },
        "loadavg": os.getloadavg(),
        "phase_saturation": saturation.summary,
        "phase_overload": overload.summary,
        "client_cpu_s": round(time.process_time(), 1),
    }


def report(r: dict) -> None:
    w = sys.stdout.write
    w(f"image {r['image']}  saturated {r['saturated_rps']:.2f} req/s  offered {r['offered_rps']:.1f} req/s ")
    w(f"for {r['duration_s']} s\n")
    w(f"sent {r['sent']}  admitted+200 {r['admitted_ok']}  rejected 503 {r['rejected_503']}  other {r['other']}  ")
    w(f"client-capped {r['skipped_by_client_cap']}\n")
    a, j = r["admitted_ms"], r["rejection_ms"]
    w(f"admitted: {r['admitted_rps']:.2f} req/s, latency p50 {a['p50']:.0f} ms p99 {a['p99']:.0f} ms ")
    w(f"max {a['max']:.0f} ms\n")
    w(f"rejections: p50 {j['p50']:.1f} ms  p99 {j['p99']:.1f} ms  max {j['max']:.1f} ms\n")
    m = r["rss_mib"]
    w(f"server RSS: idle {m['idle']:.0f} MiB  peak {m['peak']:.0f} MiB  end {m['end']:.0f} MiB ")
    w(f"({m['samples']} samples); peak per 15 s window {m['peak_per_15s']} MiB\n")
    w(f"probe before {r['probe_ms_before']} ms  after {r['probe_ms_after']} ms  /readyz after {r['readyz_after']}\n")
    w(f"server failure counters {r['server_failures']}  load average {r['loadavg']}\n")
    w(f"saturation phase {r['phase_saturation']}\noverload phase {r['phase_overload']}\n")
    w(f"load generator CPU {r['client_cpu_s']} s\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, help="bundle to serve (default: random weights, same compute)")
    p.add_argument("--size", default="256x192", help="WIDTHxHEIGHT of the synthetic upload")
    p.add_argument("--factor", type=float, default=10.0, help="offered rate as a multiple of the saturated rate")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    p.add_argument("--saturate-s", type=float, default=30.0, help="seconds of the closed-loop saturation run")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_bundle(Path(tmp))
        proc = start_server(checkpoint, port, args.threads)
        try:
            wait_ready(url, proc, timeout=120)
            result = asyncio.run(bench(args, url, proc.pid))
            alive = proc.poll() is None
        finally:
            proc.terminate()
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(10)
    result["server_alive_after"] = alive
    result["server_exit_code"] = rc
    report(result)
    sys.stdout.write(f"server alive after the overload: {alive}; exit code on SIGTERM: {rc}\n")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    failed = result["other"] or not alive or result["readyz_after"] != 200 or rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
