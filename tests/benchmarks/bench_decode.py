"""What decoding in capped processes costs an ordinary photo, and what trimming the heap when idle costs.

    .venv/bin/python tests/benchmarks/bench_decode.py [--repeats 9] [--e2e 6] [--large-e2e]

Not a test: prints figures, with the CPU flags (the kernels depend on them). Three parts, each comparing the
code before issue 25 with the code now in the same run, interleaved (A B A B …), medians:

1. the decode stage alone, for a 600×400 and a 4000×3000 (12 MP) q90 JPEG (``tests.photos.phone_photo``):
   before, in a thread of the serving process (``imaging.probe`` + ``imaging.decode`` + tensor + min-max
   stretch, the former ``payloads.normalised``); now, in a :class:`service.decoding.DecodePool` process
   (pipe in, shared memory out) + tensor + stretch;
2. ``POST /enhance?alpha=2`` of the 600×400 photo end to end (shipped bundle, 1 torch thread) on two servers
   in this process, one with the former decode path patched in; ``--large-e2e`` adds one 12 MP request each;
3. the heap trim: a 600×400 request 3 s after another (so the trim has run), with the trim on and off; and the process's RSS idle → peak → 10 s after a 12 MP request (with ``--large-e2e``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kind_serve.model.image import to_tensor  # noqa: E402
from kind_serve.model.normalise import normalise  # noqa: E402
from kind_serve.service import admission, imaging, payloads  # noqa: E402
from kind_serve.service.batcher import Batcher  # noqa: E402
from kind_serve.service.config import Settings  # noqa: E402
from kind_serve.service.decoding import DECODE_TIMEOUT_S, DecodePool  # noqa: E402
from kind_serve.service.metrics import Metrics  # noqa: E402
from tests.machine import cpu_flags  # noqa: E402
from tests.photos import phone_photo  # noqa: E402
from tests.servers import ThreadServer  # noqa: E402

SETTINGS = Settings()


def _legacy_prepare(data: bytes, settings: Settings) -> payloads.Normalised:
    with imaging.open_checked(data, settings.max_pixels) as image:
        x = to_tensor(imaging.load_rgb(image, settings.max_pixels))
    s, span = normalise(x)
    return payloads.Normalised(s, float(span), float(x.amin()))


async def legacy_normalised(ticket: Any, data: bytes, settings: Settings) -> payloads.Normalised:
    """``payloads.normalised`` before issue 25: header probe and decode in the serving process's threads."""
    header = await asyncio.to_thread(imaging.open_checked, data, settings.max_pixels)
    header.close()
    ticket.reserve(header.width * header.height)
    return await asyncio.to_thread(_legacy_prepare, data, settings)


def _median_ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:8.1f} ms (min {min(times) * 1000:.1f}, n={len(times)})"


async def _decode_stage(photos: dict[str, bytes], repeats: int) -> None:
    pool = DecodePool(1, SETTINGS.decode_memory_mb << 20, DECODE_TIMEOUT_S, SETTINGS.max_pixels, Metrics())
    await pool.start()
    batcher = Batcher()
    try:
        for name, data in photos.items():
            before, after = [], []
            for _ in range(repeats):
                with batcher.admit() as ticket:
                    t = time.perf_counter()
                    await legacy_normalised(ticket, data, SETTINGS)
                    before.append(time.perf_counter() - t)
                with batcher.admit() as ticket:
                    t = time.perf_counter()
                    decoded = await pool.decode(ticket, data)
                    try:
                        await asyncio.to_thread(payloads._prepare, decoded)
                    finally:
                        decoded.release()
                    after.append(time.perf_counter() - t)
            extra = statistics.median(after) - statistics.median(before)
            print(
                f"decode stage {name}: before {_median_ms(before)}  now {_median_ms(after)}  (+{extra * 1000:.1f} ms)"
            )
    finally:
        await pool.close()


def _post(url: str, data: bytes) -> float:
    t = time.perf_counter()
    r = httpx.post(url + "/enhance", params={"alpha": "2"}, content=data, timeout=httpx.Timeout(900.0))
    r.raise_for_status()
    return time.perf_counter() - t


def _alternate(label: str, a: tuple[str, Callable[[], float]], b: tuple[str, Callable[[], float]], n: int) -> None:
    times: dict[str, list[float]] = {a[0]: [], b[0]: []}
    for _ in range(n):
        for name, run in (a, b):
            times[name].append(run())
    ma, mb = (statistics.median(times[k]) for k in (a[0], b[0]))
    print(
        f"{label}: {a[0]} {_median_ms(times[a[0]])}  {b[0]} {_median_ms(times[b[0]])}  ({(mb / ma - 1) * 100:+.1f} %)"
    )


def _rss_mib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--e2e", type=int, default=6, help="end-to-end 600×400 requests per server")
    ap.add_argument("--large-e2e", action="store_true", help="one 12 MP request per server, and its RSS")
    ap.add_argument("--parts", default="stage,e2e,trim", help="which of stage, e2e, trim to run")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(1)
    print(cpu_flags(torch_threads=1))
    photos = {"600×400": phone_photo(600, 400), "4000×3000": phone_photo(4000, 3000)}
    if "stage" in parts:
        asyncio.run(_decode_stage(photos, args.repeats))

    settings = Settings(device="cpu", json_logs=False, log_level="WARNING")
    with ThreadServer(settings) as now, ThreadServer(settings) as before:
        real = payloads.normalised
        small = photos["600×400"]

        def on_before(data: bytes) -> Callable[[], float]:
            def run() -> float:
                payloads.normalised = legacy_normalised  # type: ignore[assignment]
                try:
                    return _post(before.url, data)
                finally:
                    payloads.normalised = real

            return run

        _post(now.url, small), on_before(small)()  # first requests: lazy initialisation
        if "e2e" in parts:
            _alternate(
                "POST /enhance 600×400", ("before", on_before(small)), ("now", lambda: _post(now.url, small)), args.e2e
            )
        if "e2e" in parts and args.large_e2e:
            large = photos["4000×3000"]
            _alternate("POST /enhance 12 MP", ("before", on_before(large)), ("now", lambda: _post(now.url, large)), 1)

        trim_delay = admission._TRIM_AFTER_IDLE_S

        def after_idle(delay: float) -> Callable[[], float]:
            def run() -> float:
                admission._TRIM_AFTER_IDLE_S = delay  # read when the previous request ends
                _post(now.url, small)
                time.sleep(3.0)  # past the idle delay: with the trim on, the heap has been given back
                return _post(now.url, small)

            return run

        try:
            if "trim" in parts:
                _alternate(
                    "600×400 after 3 s idle",
                    ("trim off", after_idle(1e9)),
                    ("trim on", after_idle(trim_delay)),
                    args.e2e,
                )
        finally:
            admission._TRIM_AFTER_IDLE_S = trim_delay
        if args.large_e2e:
            time.sleep(5)
            idle = _rss_mib("VmRSS")
            _post(now.url, photos["4000×3000"])
            peak = _rss_mib("VmHWM")
            time.sleep(10)
            print(f"RSS of the serving process: idle {idle} MiB → peak {peak} MiB → 10 s after {_rss_mib('VmRSS')} MiB")
            print(
                f"600×400 after 3 s idle once more (the trim's floor now known): {_post(now.url, small) * 1000:.1f} ms"
            )


if __name__ == "__main__":
    main()
