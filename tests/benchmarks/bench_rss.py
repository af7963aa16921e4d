"""Does the server give memory back after a large photo? ``kind serve``'s RSS before, during and after one.

    .venv/bin/python tests/benchmarks/bench_rss.py [--repo PATH] [--size 4000x3000]

Not a test: prints one line. Starts ``kind serve`` (the shipped bundle, 1 torch thread; ``--repo`` serves
another checkout with this environment, for a "before" figure), sends a 600×400 photo, reads the main
process's RSS 4 s later (idle), sends one ``--size`` photo (``tests.photos.phone_photo``) to
``POST /enhance?alpha=2``, and reads the peak (``VmHWM``) and the RSS 1, 3, 5, 10, 30 and 60 s after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.machine import cpu_flags  # noqa: E402
from tests.photos import phone_photo  # noqa: E402
from tests.servers import free_port, wait_ready  # noqa: E402


def rss_mib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT, help="the checkout to serve (default: this one)")
    ap.add_argument("--size", default="4000x3000", help="the large photo, WIDTHxHEIGHT")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(cpu_flags(repo=args.repo, torch_threads=1))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"KIND_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "KIND_JSON_LOGS": "false"}
    command = [sys.executable, "-m", "kind_cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        command, cwd=args.repo, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(url, proc, 300)
        httpx.post(url + "/enhance?alpha=2", content=phone_photo(600, 400), timeout=600).raise_for_status()
        time.sleep(4)
        idle = rss_mib(proc.pid)
        start = time.monotonic()
        answer = httpx.post(url + "/enhance?alpha=2", content=phone_photo(width, height), timeout=1800)
        took = time.monotonic() - start
        peak = rss_mib(proc.pid, "VmHWM")
        after, waited = [], 0
        for second in (1, 3, 5, 10, 30, 60):
            time.sleep(second - waited)
            waited = second
            after.append(f"{second} s: {rss_mib(proc.pid)}")
        print(
            f"{width}×{height}: {answer.status_code} in {took:.1f} s; main process RSS idle {idle} → peak {peak} → "
            + ", ".join(after)
            + " MiB"
        )
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
