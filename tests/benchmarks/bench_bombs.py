"""Issue 25's decoder attacks against ``kind serve``: answer, time, the server's memory, another client meanwhile.

    .venv/bin/python tests/benchmarks/bench_bombs.py [--repo PATH] [--only tiff,gif,strip,avif,disconnect]

Not a test: prints one line per attack. ``--repo`` serves another checkout (``git archive HEAD | tar -x -C
/tmp/old``) with this environment, to measure the code before a change in the same way. For each attack a
fresh ``kind serve`` (random-weights bundle, default settings but two bearer tokens so the two clients are told
apart, 1 torch thread) gets the bomb from client A and, 0.3 s later, a 64×64 PNG from client B; the RSS of the
server's whole process tree (main process, forkserver, decoders) is sampled every 50 ms from ``/proc``; after
the answer, the tree's RSS is followed for 60 s to see it return to idle.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kind_serve.model import KinD  # noqa: E402
from tests.machine import cpu_flags  # noqa: E402
from tests.reliability import decoder_bombs, hostile  # noqa: E402
from tests.servers import free_port, wait_ready  # noqa: E402

TOKEN_A, TOKEN_B = "attacking-client-token-aaaa", "ordinary-client-token-bbbb"
SMALL = hostile.encode(hostile.noise(64, 64), "PNG")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_mib(pid: int, field: str = "Rss") -> int:
    """The tree's memory: the sum of ``Pss`` (shared pages split between sharers), or one process's ``Rss``."""
    total = 0
    for p in tree(pid) if field == "Pss" else [pid]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total // 1024


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of ``pid``'s tree."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


class Sampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.main_peak, self.running = pid, 0, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mib(self.pid, "Pss"))
            self.main_peak = max(self.main_peak, rss_mib(self.pid))
            time.sleep(0.05)


def post(url: str, body: bytes, token: str, path: str = "/enhance") -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"}
    return httpx.post(url + path, params={"alpha": "2", "mode": "paper"}, content=body, headers=headers, timeout=600)


def hang_up(port: int, body: bytes, times: int = 3) -> str:
    """Send ``body`` and close the connection after 0.3 s, ``times`` times in a row."""
    head = (
        f"POST /enhance?alpha=2&mode=paper HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(times):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + body)
            time.sleep(0.3)
    return f"hung up {times}× after 0.3 s each"


def attack(repo: Path, bundle: Path, name: str, send: Callable[[str, int], str], env: dict[str, str]) -> None:
    """One attack on a fresh server; client B's request goes 0.3 s in, or after it when there is one slot."""
    b_after = env.get("KIND_MAX_PENDING_REQUESTS") == "1"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kind_cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--checkpoint",
            str(bundle),
            "--tile-size",
            "128",
        ],
        cwd=repo,
        env={
            **os.environ,
            "KIND_DEVICE": "cpu",
            "KIND_WARMUP": "false",
            "KIND_JSON_LOGS": "false",
            "OMP_NUM_THREADS": "1",
            "KIND_AUTH_TOKENS": f"{TOKEN_A},{TOKEN_B}",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(url, proc)
        post(url, SMALL, TOKEN_B)  # first request: lazy initialisation out of the figures
        time.sleep(3)
        idle = rss_mib(proc.pid, "Pss")
        sampler = Sampler(proc.pid)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            watch = pool.submit(sampler.run)
            start = time.monotonic()
            answer = pool.submit(send, url, port)
            if b_after:
                answer.result()
            else:
                time.sleep(0.3)
            sent = time.monotonic()
            other = post(url, SMALL, TOKEN_B)
            other_s = time.monotonic() - sent
            result = answer.result()
            took = time.monotonic() - start
            cpu_before = cpu_s(proc.pid)
            time.sleep(5)
            cpu_after = cpu_s(proc.pid) - cpu_before
            sampler.running = False
            watch.result()
        back = None
        for second in range(61):
            if rss_mib(proc.pid, "Pss") <= idle + 200:
                back = second
                break
            time.sleep(1)
        print(
            f"{name}: {result} in {took:.1f} s; B's 64×64: {other.status_code} in {other_s:.1f} s; server CPU in "
            f"the 5 s after: {cpu_after:.1f} s; tree PSS idle "
            f"{idle} → peak {sampler.peak} MiB (main process RSS peak {sampler.main_peak}); within 200 MiB of "
            f"idle after {'>60' if back is None else back} s",
            flush=True,
        )
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT, help="the checkout to serve (default: this one)")
    ap.add_argument("--only", default="tiff,gif,strip,avif,disconnect")
    args = ap.parse_args()
    print(cpu_flags(repo=args.repo))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        KinD(version="bench-random").save(bundle)

        def bomb(data: bytes, path: str = "/enhance") -> Callable[[str, int], str]:
            def send(url: str, port: int) -> str:
                r = post(url, data, TOKEN_A, path)
                return f"{r.status_code} {r.text[:90]!r}" if r.status_code >= 400 else str(r.status_code)

            return send

        cases = {
            "tiff": ("TIFF 64×64, one 25008² deflate tile (187 B)", bomb(decoder_bombs.tiff_lying_tile()), {}),
            "gif": ("GIF 7000² screen, 1-px frame (35 B)", bomb(decoder_bombs.gif_huge_screen(7000)), {}),
            "strip": ("PNG 10,000,000×1", bomb(decoder_bombs.png_strip()), {}),
            "avif": (
                "AVIF 'ispe' 64×64 over a 6000² frame, /images",
                bomb(decoder_bombs.avif_lying_container(6000), "/images"),
                {},
            ),
            "disconnect": (
                "4096² JPEG, 90 scans, client hangs up at 0.3 s, 1 slot",
                lambda url, port: hang_up(port, hostile.jpeg_scan_bomb(4096, 90)),
                {"KIND_MAX_PENDING_REQUESTS": "1", "KIND_CLIENT_SHARE": "1"},
            ),
        }
        for key in args.only.split(","):
            name, send, env = cases[key]
            attack(args.repo, bundle, name, send, env)


if __name__ == "__main__":
    main()
