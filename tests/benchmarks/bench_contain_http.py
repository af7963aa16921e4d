"""Issue 25's HTTP-edge attacks against a real ``kind serve`` on loopback with default settings, timed.

    python tests/benchmarks/bench_contain_http.py [--connections 600] [--json-out FILE]

Starts ``kind serve`` (default settings but for ``KIND_STORE_MAX_BYTES=8 MiB`` in phase 4, 1 torch thread, a
random-weights bundle) from the repository this file is in, so running the copy in an older checkout measures
that checkout. Phases, each bounded:

1. idle connection: connect, send nothing; seconds until the server closes it (cap 30 s);
2. trickled request head: a 40-byte head to ``/livez``, one byte every 0.5 s; the answer and when it came;
3. connection flood: ``--connections`` connections opened and held idle; how many the server answered 503
   at once, how many it kept, and whether a normal request got 200 right after the flood's connections went;
4. spoofed ``X-Forwarded-For``: 8 uploads of ~1 MiB images to ``POST /images``, each claiming another
   address, into an 8 MiB store (4 MiB per client): the statuses (429 = the header bought no new share);
5. ``/docs`` and ``/redoc``: their ``Content-Security-Policy`` and ``X-Frame-Options`` headers.

Prints one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.reliability import hostile  # noqa: E402
from tests.reliability.hostile import until_closed  # noqa: E402
from tests.servers import free_port, kind_serve, wait_ready  # noqa: E402


def idle(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        answer, closed_after = until_closed(sock, 30.0)
        closed_after = None if closed_after is None else round(closed_after, 2)
    return {"closed_after_s": closed_after, "bytes_sent_by_server": len(answer)}


def trickled_head(port: int) -> dict:
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-A: bbb\r\n\r\n"
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        answer = hostile.trickle(sock, head, 0.5)
        took = time.monotonic() - start
    return {"head_bytes": len(head), "answer": answer.split(b"\r\n", 1)[0].decode(), "after_s": round(took, 2)}


def flood(port: int, url: str, count: int) -> dict:
    """Open ``count`` connections and hold them idle for 1 s; count those answered 503 and those kept open."""
    refused = kept = failed = 0
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                failed += 1
        time.sleep(1.0)
        for sock in socks:
            sock.settimeout(0.01)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                kept += 1
                continue
            except ConnectionResetError:
                data = b""
            refused += data.startswith(b"HTTP/1.1 503")
        during = httpx.get(url + "/livez", timeout=10).status_code
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.5)
    after = httpx.get(url + "/livez", timeout=10).status_code
    return {
        "opened": count - failed,
        "kept_open": kept,
        "refused_503": refused,
        "livez_status_during": during,
        "livez_status_after": after,
    }


def spoofed_shares(url: str) -> dict:
    import numpy as np
    from PIL import Image

    statuses = []
    for i in range(8):
        pixels = np.random.default_rng(i).integers(0, 255, (600, 600, 3), dtype=np.uint8)
        body = hostile.encode(Image.fromarray(pixels), "PNG")
        headers = {"content-type": "image/png", "x-forwarded-for": f"203.0.113.{i}"}
        statuses.append(httpx.post(url + "/images", content=body, headers=headers, timeout=60).status_code)
    return {"upload_bytes": len(body), "statuses": statuses}


def docs_headers(url: str) -> dict:
    out = {}
    for path in ("/docs", "/redoc"):
        r = httpx.get(url + path, timeout=10)
        out[path] = {
            "status": r.status_code,
            "content-security-policy": r.headers.get("content-security-policy"),
            "x-frame-options": r.headers.get("x-frame-options"),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=600)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    import torch

    from kind_serve.model import KinD

    env = {"KIND_DEVICE": "cpu", "KIND_WARMUP": "false", "OMP_NUM_THREADS": "1"}
    env["KIND_STORE_MAX_BYTES"] = str(8 * 1024 * 1024)
    figures: dict = {"repo": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        bundle = Path(tmp) / "kind-random"
        KinD(version="bench-random").save(bundle)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "serve.log", "w")  # noqa: SIM115 - closed below
        proc = kind_serve(port, "--checkpoint", str(bundle), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(url, proc)
            figures["idle_connection"] = idle(port)
            figures["trickled_head"] = trickled_head(port)
            figures["connection_flood"] = flood(port, url, args.connections)
            figures["spoofed_forwarded_for"] = spoofed_shares(url)
            figures["docs"] = docs_headers(url)
        finally:
            proc.terminate()
            proc.wait(60)
            log.close()
    text = json.dumps(figures, indent=1)
    sys.stdout.write(text + "\n")
    if args.json_out:
        args.json_out.write_text(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
