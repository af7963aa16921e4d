"""Denial-of-service attempts against a real ``kind serve`` on loopback, with the issue-15 figures.

    python tests/benchmarks/bench_abuse.py [--checkpoint DIR] [--trickle-s 20] [--json-out FILE]

Starts ``kind serve`` (default settings, 1 torch thread, a random-weights bundle unless ``--checkpoint``)
and plays, while a well-behaved client keeps sending 256×192 PNGs to ``POST /enhance``:

1. slow uploads: 20 connections declare ``Content-Length: 100000`` and send one byte every 2 s;
2. parser bombs (the issue's): an 8×8 JPEG with 2,000,000 empty APP1 segments, a PNG with 1,000,000 private
   chunks, a 2048² progressive JPEG with one AC scan repeated 8,000×, each to ``POST /images`` and
   ``POST /enhance`` while ``/livez`` is polled every 20 ms; the pre-scan's own time on 64 MiB worst cases
   and Pillow's time on the bombs (what the service spent before the pre-scan) are measured in-process;
3. request heads: a 2 MB request line, a 2 MB header, 20,000 header fields;
4. a greedy client (a second server with 4 admission slots and two bearer tokens): 10× its share of the
   slots at once, retrying after Retry-After, while the other client sends 128×96 PNGs one after another.

Prints every figure with the CPU's flags; exits 1 when the polite client got anything but 200.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kind_serve.service.config import Settings  # noqa: E402
from kind_serve.service.prescan import (  # noqa: E402
    SCAN_LIMITS,  # noqa: E402
    TooComplex,
    _next_marker,
    prescan,
)
from tests.machine import cpu_flags  # noqa: E402
from tests.reliability import hostile  # noqa: E402
from tests.servers import free_port  # noqa: E402

MiB = 1024 * 1024
TOKENS = ("greedy-client-token-aaaa", "polite-client-token-bbbb")
# α fixed and paper mode: the requests cost the networks' time only (photo mode's post-processing is not what
# these phases measure)
PARAMS = {"alpha": "2", "mode": "paper"}
# the greedy phase: 4 slots (2 per client) and 128×96 images, so that 10× a client's share is 20 connections
# whose compute fits the request deadline on a small shared CPU
GREEDY_PENDING, GREEDY_SIZE = 4, 128


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(checkpoint: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = {
        **os.environ,
        "KIND_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "KIND_LOG_LEVEL": "WARNING",
        "KIND_WARMUP": "false",
        **env,
    }
    cmd = [sys.executable, "-m", "kind_cli", "serve", "--port", str(port), "--checkpoint", str(checkpoint)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # start-up measures the model's speed: minutes on a busy CPU
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read()[-2000:])
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("kind serve did not become ready")


def polite(url: str, stop: threading.Event, token: str | None = None, size: int = 256) -> list[tuple[int, float]]:
    """Sequential normal requests (``size``×¾``size`` PNGs) until ``stop``: (status, seconds) each."""
    body = hostile.encode(hostile.noise(size, size * 3 // 4), "PNG")
    headers = {"content-type": "image/png", **({"authorization": f"Bearer {token}"} if token else {})}
    out = []
    while not stop.is_set():
        t = time.monotonic()
        r = httpx.post(url + "/enhance", params=PARAMS, content=body, headers=headers, timeout=120)
        out.append((r.status_code, time.monotonic() - t))
    return out


def trickle(port: int, every: float = 2.0) -> tuple[str, float]:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(b"POST /enhance HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        sock.settimeout(every)
        answer = b""
        while not answer and time.monotonic() - start < 120:
            try:
                sock.sendall(b"\x00")
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
    return answer.split(b"\r\n", 1)[0].decode(errors="replace"), time.monotonic() - start


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    v = sorted(values)
    return f"n={len(v)} median {v[len(v) // 2]:.2f} s, max {v[-1]:.2f} s"


def phase_slow_uploads(url: str, port: int, seconds: float) -> dict:
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        base_stop = threading.Event()
        timer = threading.Timer(6.0, base_stop.set)
        timer.start()
        baseline = polite(url, base_stop)
        slow = [pool.submit(trickle, port) for _ in range(20)]
        time.sleep(0.5)
        normal = pool.submit(polite, url, stop)
        answers = [f.result() for f in slow]
        time.sleep(max(0.0, seconds - max(t for _, t in answers)))
        stop.set()
        during = normal.result()
    result = {
        "baseline": summary([t for _, t in baseline]),
        "during": summary([t for _, t in during]),
        "during_statuses": sorted({s for s, _ in during}),
        "slow_answers": sorted({a for a, _ in answers}),
        "slow_cut_after": summary([t for _, t in answers]),
    }
    print(
        f"slow uploads: normal /enhance before {result['baseline']}; during 20 trickles {result['during']} "
        f"statuses {result['during_statuses']}; trickles answered {result['slow_answers']} after "
        f"{result['slow_cut_after']}",
        flush=True,
    )
    return result


def bombs() -> list[tuple[str, bytes, str]]:
    return [
        ("JPEG 8×8 + 2,000,000 empty APP1", hostile.jpeg_segment_bomb(2_000_000), "image/jpeg"),
        ("PNG + 1,000,000 private chunks", hostile.png_chunk_bomb(1_000_000), "image/png"),
        ("progressive JPEG 2048², AC scan ×8000", hostile.jpeg_scan_bomb(2048, 8000), "image/jpeg"),
    ]


def phase_bombs(url: str, pid: int) -> dict:
    from PIL import Image

    results: dict = {}
    limits = SCAN_LIMITS
    for name, body, ctype in bombs():
        t = time.perf_counter()
        with contextlib.suppress(TooComplex):
            prescan(body, limits)
        scan_s = time.perf_counter() - t
        t = time.perf_counter()
        with Image.open(io.BytesIO(body)) as im:
            im.load()
        pillow_s = time.perf_counter() - t
        stop, probes = threading.Event(), []

        def poll(stop: threading.Event = stop, probes: list[float] = probes) -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                httpx.get(url + "/livez", timeout=60)
                probes.append(time.monotonic() - t0)
                time.sleep(0.02)

        rss0 = rss_mib(pid)
        poller = threading.Thread(target=poll)
        poller.start()
        answers = {}
        for path in ("/images", "/enhance"):
            t = time.monotonic()
            r = httpx.post(url + path, content=body, headers={"content-type": ctype}, timeout=120)
            answers[path] = (r.status_code, round(time.monotonic() - t, 3))
        stop.set()
        poller.join()
        results[name] = {
            "bytes": len(body),
            "prescan_s": round(scan_s, 4),
            "pillow_open_load_s": round(pillow_s, 3),
            "answers": answers,
            "livez_max_s": round(max(probes), 3),
            "rss_mib": (round(rss0), round(rss_mib(pid))),
        }
        print(
            f"bomb {name} ({len(body) / MiB:.1f} MiB): {answers}; /livez max {max(probes) * 1000:.0f} ms; "
            f"pre-scan {scan_s * 1000:.1f} ms vs Pillow open+load {pillow_s:.2f} s; RSS {rss0:.0f} → "
            f"{rss_mib(pid):.0f} MiB",
            flush=True,
        )
    return results


def phase_prescan_worst() -> dict:
    limits = SCAN_LIMITS
    jpeg = hostile.encode(hostile.noise(8, 8), "JPEG")
    png = hostile.encode(hostile.noise(), "PNG")
    idat = png.index(b"IDAT") - 4
    cases = {
        "JPEG, 64 MiB of stuffed 0xFF00 entropy data": jpeg[:-2] + b"\xff\x00" * (32 * MiB) + b"\xff\xd9",
        "JPEG, 64 MiB of random entropy data": jpeg[:-2] + os.urandom(64 * MiB).replace(b"\xff", b"\xfe") + b"\xff\xd9",
        "PNG, 64 MiB of 512-byte IDAT chunks": png[:idat]
        + hostile._chunk(b"IDAT", b"\0" * 500) * (64 * MiB // 512)
        + png[idat:],
    }
    out = {}
    for name, data in cases.items():
        t = time.perf_counter()
        try:
            prescan(data, limits)
            verdict = "passed"
        except TooComplex as exc:
            verdict = f"refused ({exc})"
        out[name] = round(time.perf_counter() - t, 3)
        print(f"pre-scan worst case {name}: {out[name] * 1000:.0f} ms, {verdict}", flush=True)
        if name.startswith("JPEG"):  # the marker search the walk uses vs the obvious regular expression
            body = data[len(jpeg) - 2 :]
            t = time.perf_counter()
            _next_marker(body, 0)
            vectorised = time.perf_counter() - t
            t = time.perf_counter()
            re.compile(rb"\xff[^\x00\xd0-\xd7\xff]").search(body)
            regex = time.perf_counter() - t
            print(
                f"  marker search: vectorised {vectorised * 1000:.0f} ms, regex {regex * 1000:.0f} ms "
                f"({regex / vectorised:.1f}×)",
                flush=True,
            )
    return out


def raw(port: int, request: bytes) -> tuple[str, float]:
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
        answer = sock.recv(4096)
    return answer.split(b"\r\n", 1)[0].decode(errors="replace"), round(time.monotonic() - t, 3)


def phase_heads(port: int) -> dict:
    cases = {
        "2 MB request line": b"GET /livez?" + b"a" * 2_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "2 MB header": b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 2_000_000 + b"\r\n\r\n",
        "20,000 header fields": b"GET /livez HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(20_000))
        + b"\r\n",
    }
    out = {name: raw(port, request) for name, request in cases.items()}
    for name, (line, took) in out.items():
        print(f"head {name}: {line} in {took * 1000:.0f} ms", flush=True)
    return out


def phase_greedy(url: str, seconds: float) -> dict:
    body = hostile.encode(hostile.noise(GREEDY_SIZE, GREEDY_SIZE * 3 // 4), "PNG")
    headers = {"content-type": "image/png", "authorization": f"Bearer {TOKENS[0]}"}
    stop = threading.Event()
    statuses: list[int] = []

    def greedy() -> None:
        while not stop.is_set():
            r = httpx.post(url + "/enhance", params=PARAMS, content=body, headers=headers, timeout=120)
            statuses.append(r.status_code)
            if r.status_code in (429, 503):  # the client honours Retry-After (a spinning client on this
                time.sleep(float(r.headers.get("retry-after", "1")))  # 2-core machine would starve the server)

    share = Settings().client_quota(GREEDY_PENDING)
    with concurrent.futures.ThreadPoolExecutor(10 * share + 1) as pool:
        for _ in range(10 * share):
            pool.submit(greedy)
        time.sleep(2.0)
        done = threading.Event()
        timer = threading.Timer(seconds, done.set)
        timer.start()
        polite_out = polite(url, done, TOKENS[1], GREEDY_SIZE)
        stop.set()
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    result = {
        "greedy_clients": 10 * share,
        "greedy_statuses": counts,
        "polite": summary([t for _, t in polite_out]),
        "polite_statuses": sorted({s for s, _ in polite_out}),
    }
    print(
        f"greedy client, {10 * share} concurrent (10× its {share} slots): {counts}; the other client "
        f"{result['polite']} statuses {result['polite_statuses']}",
        flush=True,
    )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--trickle-s", type=float, default=20.0)
    p.add_argument("--greedy-s", type=float, default=20.0)
    p.add_argument("--only", choices=("main", "greedy", "prescan"), help="run one server's phases only")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    print(f"machine: {cpu_flags(load=round(os.getloadavg()[0], 1))}", flush=True)
    tmp = tempfile.TemporaryDirectory()
    checkpoint = args.checkpoint
    if checkpoint is None:
        import torch

        from kind_serve.model import KinD

        torch.manual_seed(0)
        checkpoint = Path(tmp.name) / "kind-random"
        KinD(version="bench-random").save(checkpoint)
    report: dict = {"machine": cpu_flags(load=round(os.getloadavg()[0], 1))}
    if args.only in (None, "main"):
        proc, url = start(checkpoint, {})
        try:
            port = int(url.rsplit(":", 1)[1])
            report["slow_uploads"] = phase_slow_uploads(url, port, args.trickle_s)
            report["bombs"] = phase_bombs(url, proc.pid)
            report["heads"] = phase_heads(port)
        finally:
            proc.terminate()
            proc.wait(60)
    if args.only in (None, "prescan"):
        report["prescan_worst"] = phase_prescan_worst()
    if args.only in (None, "greedy"):
        env = {"KIND_AUTH_TOKENS": ",".join(TOKENS), "KIND_MAX_PENDING_REQUESTS": str(GREEDY_PENDING)}
        proc, url = start(checkpoint, env)
        try:
            report["greedy"] = phase_greedy(url, args.greedy_s)
        finally:
            proc.terminate()
            proc.wait(60)
    print(f"machine: {cpu_flags(load=round(os.getloadavg()[0], 1))}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    polite = [
        report[k][f] for k, f in (("slow_uploads", "during_statuses"), ("greedy", "polite_statuses")) if k in report
    ]
    return 0 if all(statuses == [200] for statuses in polite) else 1


if __name__ == "__main__":
    sys.exit(main())
