"""Phone-sized photos through the service: 12 MP synchronously, 48 MP as a job. Not a test: prints figures.

    .venv/bin/python tests/benchmarks/bench_large.py [--threads 2] [--skip-48]

Starts ``kind serve``'s app with the shipped checkpoint and default settings (warm-up and speed calibration
included) under a real uvicorn server on loopback, then:

1. ``POST /enhance?alpha=auto`` with a 4000×3000 (12 MP) JPEG: the wall time, the admission estimate
   (the server's learned seconds per megapixel × the padded tile pixels) and the output size;
2. with ``--job12``, or when the synchronous request was refused, the same 12 MP photo as a job (``POST /jobs``): time to the first progress update and to
   done, against the synchronous wall time;
3. an 8000×6000 (48 MP) photo through ``POST /enhance``: with the default ``max_sync_work_s`` on a CPU this is
   refused at once (413 naming the estimate and the job route), then sent as a job: the time to its first
   progress update (first item done) and to done. A job still running after ``--max-wait`` seconds is
   cancelled and its rate so far is extrapolated (printed as such).

The photos are ``tests.photos.phone_photo`` (a real phone exposure) at 12 and 48 MP. The CPU model and the
flags that decide the kernels are printed with every figure.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kind_serve.service.config import Settings  # noqa: E402
from tests.machine import cpu_flags  # noqa: E402
from tests.photos import phone_photo  # noqa: E402
from tests.servers import ThreadServer  # noqa: E402


def run_job(client: httpx.Client, query: str, body: bytes, max_wait: float) -> tuple[float, float | None, dict]:
    """(seconds to done — or to ``max_wait``, when the job is cancelled —, to the first progress update, record)."""
    start = time.perf_counter()
    resp = client.post(f"/jobs?{query}", content=body)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    first, last_print = None, start
    while True:
        record = client.get(f"/jobs/{job_id}").json()
        now = time.perf_counter()
        if first is None and record["progress"]["done"] > 0:
            first = now - start
            print(f"  first progress update after {first:.1f} s: {record['progress']}, ETA {record['eta_s']} s")
        if now - last_print > 30:
            last_print = now
            print(f"  {now - start:.0f} s: {record['state']} {record['progress']}, ETA {record['eta_s']} s", flush=True)
        if record["state"] in ("done", "failed", "cancelled"):
            return now - start, first, record
        if now - start > max_wait:
            client.delete(f"/jobs/{job_id}")
            done, total = record["progress"]["done"], record["progress"]["total"]
            rate = (now - start) / max(done, 1)
            print(
                f"  stopped at --max-wait: {done}/{total} items in {now - start:.0f} s, {rate:.1f} s per item; "
                f"at that rate the whole job takes about {rate * total:.0f} s"
            )
            return now - start, first, record
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-48", action="store_true", help="only the 12-megapixel figures")
    parser.add_argument("--job12", action="store_true", help="also run the 12-megapixel photo as a job")
    parser.add_argument("--max-wait", type=float, default=900, help="cancel a job still running after this (s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_flags(torch_threads=torch.get_num_threads())}", flush=True)
    settings = Settings(device="cpu", json_logs=False, log_level="WARNING")
    start = time.perf_counter()
    with ThreadServer(settings) as server, httpx.Client(base_url=server.url, timeout=3600) as client:
        print(f"server ready in {time.perf_counter() - start:.1f} s (warm-up and calibration included)", flush=True)
        speed = server.app.state.batcher.workload.speed
        print(f"calibrated: {speed.snapshot()} s per megapixel", flush=True)
        body12 = phone_photo(4000, 3000)
        start = time.perf_counter()
        resp = client.post("/enhance?alpha=auto", content=body12)
        wall12 = time.perf_counter() - start
        print(f"12 MP POST /enhance: {resp.status_code} in {wall12:.1f} s, X-Alpha {resp.headers.get('x-alpha')}")
        if resp.status_code == 200:
            print(f"  output {Image.open(io.BytesIO(resp.content)).size}; learned now {speed.snapshot()}")
        else:
            print(f"  {resp.text[:400]}")
        if args.job12 or resp.status_code != 200:
            total, first, record = run_job(client, "alpha=auto", body12, args.max_wait)
            print(
                f"12 MP job: {record['state']} in {total:.1f} s, estimate {record['estimate_s']} s, {record['progress']}"
            )
        if args.skip_48:
            return
        body48 = phone_photo(8000, 6000)
        start = time.perf_counter()
        resp = client.post("/enhance?alpha=auto", content=body48)
        detail = "" if resp.status_code == 200 else f": {resp.text[:400]}"
        print(f"48 MP POST /enhance: {resp.status_code} in {time.perf_counter() - start:.1f} s{detail}")
        total, first, record = run_job(client, "alpha=auto", body48, args.max_wait)
        print(f"48 MP job: {record['state']} in {total:.1f} s, estimate {record['estimate_s']} s, {record['progress']}")
        print(f"machine: {cpu_flags(torch_threads=torch.get_num_threads())}")


if __name__ == "__main__":
    main()
