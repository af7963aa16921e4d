"""A stored 12 MP photo re-lit at a new α, against its first enhancement. Not a test: prints figures.

    .venv/bin/python tests/benchmarks/bench_relight.py [--threads 2] [--width 4000 --height 3000] [--preview 1024]

Starts ``kind serve`` as a process of its own (shipped checkpoint, default settings: precision auto, warm-up
and calibration; ``OMP_NUM_THREADS`` = ``--threads``) on loopback, stores ``tests.photos.phone_photo`` at 12 MP
(``POST /images``), then times what the demo page sends (``POST /enhance?image_id=…&alpha=…&format=jpeg``),
in its order:

1. the first preview (``preview=1024&alpha=auto``): decode, downscale, the networks on the preview, its parts
   kept, re-lighting, encoding; then the slider's round trip, a new α on the preview (re-lighting and
   encoding only);
2. the first full-resolution enhancement (``alpha=auto``): decode, the networks on every tile, parts kept in
   the cache, re-lighting, JPEG encoding;
3. a second and a third α on the same photo (4, then 2): re-lighting and encoding only;
4. the first enhancement at ``quality=fast`` (the networks at half resolution, :mod:`model.multires`; its parts
   are cached apart, so this runs the networks again), and a new α on it;

and prints their ratio, what the re-lighting cache holds (``kind_parts_cache_bytes``: the preview's entry,
then both), the exposure gain the service reports, the server process's peak RSS (``VmHWM``: the
server alone, not this client) and the machine line (CPU flags, which decide the kernels). Every time is a
client's round trip on loopback.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kind_serve.service.config import Settings  # noqa: E402
from tests.machine import cpu_flags  # noqa: E402
from tests.photos import phone_photo  # noqa: E402
from tests.servers import free_port, kind_serve, wait_ready  # noqa: E402


def metric(client: httpx.Client, pattern: str) -> str | None:
    found = re.search(pattern, client.get("/metrics").text, re.M)
    return found.group(1) if found else None


def peak_rss_gib(proc: subprocess.Popen) -> float:
    """The process's peak resident set (``VmHWM``), in GiB."""
    status = Path(f"/proc/{proc.pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.M)
    assert found is not None, "no VmHWM in /proc/<pid>/status"
    return int(found.group(1)) / 2**20


def cache_bytes(client: httpx.Client) -> float:
    return float(metric(client, r"^kind_parts_cache_bytes (\S+)$") or 0.0)


def timed(
    client: httpx.Client, image_id: str, alpha: str, preview: int | None = None, quality: str = "full"
) -> tuple[float, httpx.Response]:
    params = {"image_id": image_id, "alpha": alpha, "format": "jpeg", "quality": quality}
    if preview is not None:
        params["preview"] = str(preview)
    start = time.perf_counter()
    resp = client.post("/enhance", params=params)
    wall = time.perf_counter() - start
    assert resp.status_code == 200, resp.text
    return wall, resp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--preview", type=int, default=1024, help="the previews' longest side (the demo page's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = cpu_flags(torch_threads=torch.get_num_threads())
    print(f"machine: {machine}", flush=True)
    megapixels = args.width * args.height / 1e6
    body = phone_photo(args.width, args.height)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the environment's KIND_PRECISION (e.g. fp32 for the AVX2 column) reaches the server
    server = kind_serve(port, "--device", "cpu", "--log-level", "WARNING", env={"OMP_NUM_THREADS": str(args.threads)})
    try:
        wait_ready(url, server, timeout=300)
        run(url, server, body, megapixels, args.preview)
    finally:
        server.terminate()
        server.wait(60)
    print(f"machine: {machine}")


def run(url: str, server: subprocess.Popen, body: bytes, megapixels: float, preview: int) -> None:
    with httpx.Client(base_url=url, timeout=3600) as client:
        precision = metric(client, r'^kind_model_info\{.*precision="([^"]+)"')
        budget = Settings.model_fields["parts_cache_bytes"].default
        print(f"server ready: precision {precision}, cache budget {budget / 2**20:.0f} MiB")
        image_id = client.post("/images", content=body).json()["id"]
        cold, resp = timed(client, image_id, "auto", preview)
        print(
            f"first preview, longest side {preview} px, alpha=auto: {cold:.2f} s "
            f"(X-Alpha {resp.headers['x-alpha']}, X-Exposure-Gain {resp.headers['x-exposure-gain']})",
            flush=True,
        )
        for alpha in ("4", "2"):
            slider, resp = timed(client, image_id, alpha, preview)
            print(f"preview round trip at a new alpha={alpha}: {slider:.3f} s", flush=True)
        held_preview = cache_bytes(client)
        first, resp = timed(client, image_id, "auto")
        gain = resp.headers["x-exposure-gain"]
        print(
            f"first enhancement, {megapixels:.1f} MP, alpha=auto: {first:.1f} s "
            f"(X-Alpha {resp.headers['x-alpha']}, X-Exposure-Gain {gain})",
            flush=True,
        )
        held = cache_bytes(client) - held_preview
        for alpha in ("4", "2"):
            again, resp = timed(client, image_id, alpha)
            print(
                f"new alpha={alpha} on the stored photo: {again:.2f} s = {again / first:.1%} of the first "
                f"(X-Exposure-Gain {resp.headers['x-exposure-gain']})",
                flush=True,
            )
        peak = peak_rss_gib(server)
        print(
            f"cache holds {held / 1e6:.0f} MB for this photo ({held / 1e6 / megapixels:.1f} MB per megapixel) "
            f"and {held_preview / 1e6:.1f} MB for its preview, {cache_bytes(client) / 1e6:.0f} MB in all; "
            f"server peak RSS {peak:.2f} GiB"
        )
        # the fast path's parts are cached apart from the full ones: this is a first enhancement again
        fast, resp = timed(client, image_id, "auto", quality="fast")
        print(
            f"first enhancement at quality=fast (X-Quality {resp.headers['x-quality']}): {fast:.1f} s = "
            f"{fast / first:.1%} of the full path's first",
            flush=True,
        )
        again, _ = timed(client, image_id, "4", quality="fast")
        print(f"new alpha=4 at quality=fast: {again:.2f} s = {again / fast:.1%} of its first", flush=True)
        print(f"server peak RSS over the whole run: {peak_rss_gib(server):.2f} GiB")


if __name__ == "__main__":
    main()
