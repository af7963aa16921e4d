"""Faults: failing and out-of-memory batches, vanished clients, Redis going down, SIGTERM, a corrupt checkpoint.

The batch faults wrap the worker's real compute function (the model still runs) so that chosen items fail;
a first slow batch holds the worker while the other requests queue, so they reach it as one batch.
"""

from __future__ import annotations

import concurrent.futures
import io
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from kind_serve.service.config import Limits
from kind_serve.service.worker import Worker

from . import hostile
from .conftest import ThreadServer, free_port, metric, start_kind_serve, start_redis, stop, wait_ready

TIMEOUT = httpx.Timeout(60.0)
PNG = hostile.encode(hostile.noise(), "PNG")


def poison_png() -> bytes:
    """White with one black pixel: after the min-max stretch its mean is ≈ 1, unlike any noise image."""
    image = Image.new("RGB", (hostile.W, hostile.H), (255, 255, 255))
    image.putpixel((0, 0), (0, 0, 0))
    return hostile.encode(image, "PNG")


def is_poison(batch: torch.Tensor) -> list[bool]:
    return [bool(x.mean() > 0.9) for x in batch]


class Recorder:
    """Wraps ``Worker.compute``: records batch sizes, can hold the worker and inject failures."""

    def __init__(self, fail: Callable[[torch.Tensor], BaseException | None] | None = None) -> None:
        self.fail = fail
        self.sizes: list[int] = []
        self.ops: list[str] = []  # each batch's op, beside its size
        self.poisoned_sizes: list[int] = []
        self.hold = threading.Event()  # set: the next batch waits for `release`
        self.release = threading.Event()
        self.entered = threading.Event()
        self._original = Worker.compute

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        recorder = self

        def compute(worker: Worker, key, batch: torch.Tensor, params: list):  # noqa: ANN001, ANN202
            recorder.sizes.append(batch.shape[0])
            recorder.ops.append(key.op)
            if any(is_poison(batch)):
                recorder.poisoned_sizes.append(batch.shape[0])
            if recorder.hold.is_set():
                recorder.hold.clear()
                recorder.entered.set()
                recorder.release.wait(30)
            error = recorder.fail(batch) if recorder.fail else None
            if error is not None:
                raise error
            return recorder._original(worker, key, batch, params)

        monkeypatch.setattr(Worker, "compute", compute)


def post(url: str, body: bytes, timeout: httpx.Timeout = TIMEOUT, **params: str) -> httpx.Response:
    return httpx.post(f"{url}/enhance", params={"alpha": "2", **params}, content=body, timeout=timeout)


def metrics_text(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=TIMEOUT).text


def _run_batch_with_poison(server: ThreadServer, recorder: Recorder, normal: int) -> tuple[httpx.Response, list]:
    """One blocker request holds the worker while ``normal`` good requests and one poisoned request queue."""
    with concurrent.futures.ThreadPoolExecutor(normal + 2) as pool:
        recorder.hold.set()
        blocker = pool.submit(post, server.url, PNG)
        assert recorder.entered.wait(30)
        good = [pool.submit(post, server.url, hostile.encode(hostile.noise(seed=i + 1), "PNG")) for i in range(normal)]
        bad = pool.submit(post, server.url, poison_png())
        deadline = time.monotonic() + 30  # wait until all of them are queued behind the blocker
        while server.app.state.batcher.depth < normal + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        recorder.release.set()
        assert blocker.result().status_code == 200
        return bad.result(), [f.result() for f in good]


@pytest.mark.parametrize(
    ("error", "status", "kind", "reason"),
    [
        (RuntimeError("injected inference failure"), 500, "inference-error", "inference_error"),
        (torch.OutOfMemoryError("CUDA out of memory (injected)"), 503, "out-of-memory", "oom"),
    ],
    ids=["exception", "out-of-memory"],
)
def test_failing_batch_fails_only_its_own_request(
    make_settings, monkeypatch: pytest.MonkeyPatch, error: BaseException, status: int, kind: str, reason: str
) -> None:
    recorder = Recorder(fail=lambda batch: error if any(is_poison(batch)) else None)
    recorder.install(monkeypatch)
    with ThreadServer(make_settings(max_batch_size=8)) as server:
        bad, good = _run_batch_with_poison(server, recorder, normal=5)
        assert max(recorder.poisoned_sizes) == 6, "the poisoned item never shared a batch: nothing was tested"
        assert recorder.poisoned_sizes[-1] == 1  # split down to the poisoned item alone
        assert [r.status_code for r in good] == [200] * 5
        assert bad.status_code == status
        problem = bad.json()
        assert problem["type"].endswith(kind) and "Traceback" not in bad.text and "injected" not in bad.text
        if status == 503:
            assert bad.headers["retry-after"].isdigit()
        # the worker keeps serving
        assert post(server.url, PNG).status_code == 200
        assert httpx.get(f"{server.url}/readyz", timeout=TIMEOUT).status_code == 200
        assert metric(metrics_text(server.url), "kind_failures_total", reason=reason) == 1


def test_out_of_memory_batch_is_split_and_every_request_succeeds(make_settings, monkeypatch) -> None:
    """A batch too big for the device (OOM above 2 items) is retried in halves; nobody sees an error."""

    def too_big(batch: torch.Tensor) -> BaseException | None:
        return torch.OutOfMemoryError("CUDA out of memory (injected)") if batch.shape[0] > 2 else None

    recorder = Recorder(fail=too_big)
    recorder.install(monkeypatch)
    with ThreadServer(make_settings(max_batch_size=8)) as server:
        bad, good = _run_batch_with_poison(server, recorder, normal=5)
        assert [r.status_code for r in good] == [200] * 5 and bad.status_code == 200
        # the networks' batches (op "enhance"); the re-lighting that follows may batch the blocker's with them
        sizes = [size for size, op in zip(recorder.sizes, recorder.ops, strict=True) if op == "enhance"]
        assert max(sizes) == 6 and max(s for s in sizes[1:] if s <= 2) == 2
        text = metrics_text(server.url)
        assert metric(text, "kind_failures_total", reason="oom") == 0
        assert metric(text, "kind_batch_size_count") == len([s for s in recorder.sizes if s <= 2])


def open_request(port: int, body: bytes) -> socket.socket:
    """Send ``POST /enhance?alpha=2`` with ``body`` on a raw connection and leave it open, unanswered."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST /enhance?alpha=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
    sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_disconnected_clients_work_is_dropped_before_compute(make_settings, monkeypatch) -> None:
    recorder = Recorder()
    recorder.install(monkeypatch)
    gone = 4
    with ThreadServer(make_settings()) as server, concurrent.futures.ThreadPoolExecutor(1) as pool:
        recorder.hold.set()
        blocker = pool.submit(post, server.url, PNG)
        assert recorder.entered.wait(30)
        clients = [open_request(server.port, hostile.encode(hostile.noise(seed=i), "PNG")) for i in range(gone)]
        deadline = time.monotonic() + 30
        while server.app.state.batcher.depth < gone and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.app.state.batcher.depth == gone, "the requests never queued: nothing was tested"
        for sock in clients:  # the clients give up while their work is queued behind the held worker
            sock.close()
        time.sleep(0.5)
        computed_before = len(recorder.sizes)
        recorder.release.set()
        assert blocker.result().status_code == 200
        after_release = len(recorder.sizes) - computed_before
        text = metrics_text(server.url)
        assert metric(text, "kind_dropped_items_total", reason="disconnected") == gone
        assert metric(text, "kind_pending_requests") == 0
        before_lone = len(recorder.sizes)
        assert post(server.url, PNG).status_code == 200
        lone = len(recorder.sizes) - before_lone
        # after its held first stage the blocker ran the rest of a lone request's stages, and nothing of theirs
        # reached the model
        assert after_release == lone - 1


def test_redis_down_gives_503_on_store_routes_while_uploads_work(make_settings, redis_server) -> None:
    proc, port = redis_server
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0", store_key="k" * 40)
    with ThreadServer(settings, Limits(redis_timeout_s=0.5)) as server:
        url = server.url
        stored = httpx.post(f"{url}/images", content=PNG, timeout=TIMEOUT)
        assert stored.status_code == 201
        image_id = stored.json()["id"]
        assert post(url, b"", image_id=image_id).status_code == 200

        proc.kill()
        proc.wait(10)
        store_calls = [
            lambda: httpx.post(f"{url}/images", content=PNG, timeout=TIMEOUT),
            lambda: httpx.get(f"{url}/images/{image_id}", timeout=TIMEOUT),
            lambda: post(url, b"", image_id=image_id),
            lambda: httpx.get(f"{url}/decompose", params={"image_id": image_id}, timeout=TIMEOUT),
            lambda: httpx.get(f"{url}/decompose/{image_id}/all.zip", timeout=TIMEOUT),
        ]
        for call in store_calls:
            start = time.monotonic()
            r = call()
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json" and r.headers["retry-after"].isdigit()
            assert r.json()["type"].endswith("store-unavailable") and "Redis" in r.json()["detail"]
            assert time.monotonic() - start < 5  # a clear answer, not a hang
        upload = post(url, PNG)
        assert upload.status_code == 200 and Image.open(io.BytesIO(upload.content)).size == (hostile.W, hostile.H)
        assert httpx.post(f"{url}/decompose", content=PNG, timeout=TIMEOUT).status_code == 200
        assert httpx.get(f"{url}/readyz", timeout=TIMEOUT).status_code == 200

        restarted = start_redis(port)  # and the store routes recover once Redis is back
        try:
            assert httpx.post(f"{url}/images", content=PNG, timeout=TIMEOUT).status_code == 201
            assert post(url, b"", image_id=image_id).status_code == 200
        finally:
            restarted.kill()
            restarted.wait(10)


def wait_pending(url: str, count: int, timeout: float = 30) -> None:
    """Until the server reports ``count`` admitted requests (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while metric(metrics_text(url), "kind_pending_requests") < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_sigterm_drains_in_flight_requests_and_exits_0(rel_bundle: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    grace = 60
    proc = start_kind_serve(rel_bundle, port, "--tile-size", "128", env={"KIND_SHUTDOWN_GRACE_S": str(grace)})
    try:
        wait_ready(proc, url)
        big = hostile.encode(hostile.noise(256, 192), "PNG")  # 6 tiles of 128²: about a second of work each
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            inflight = [pool.submit(post, url, big) for _ in range(4)]
            wait_pending(url, 4)
            sent_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            try:  # admissions are closed: refused at the socket, or 503 while the listener is still open
                late = httpx.post(f"{url}/enhance", content=PNG, timeout=10)
                assert late.status_code == 503, late.text
            except httpx.ConnectError:
                pass
            results = [f.result() for f in inflight]
        assert [r.status_code for r in results] == [200] * 4
        assert all(Image.open(io.BytesIO(r.content)).size == (256, 192) for r in results)
        rc = proc.wait(grace + 15)
        assert rc == 0, proc.stderr.read()[-3000:]
        assert time.monotonic() - sent_at < grace
    finally:
        stop(proc)


def test_requests_cut_off_by_the_grace_period_get_503_and_the_process_exits_0(rel_bundle: Path) -> None:
    """With more work in flight than the grace period allows, clients get a retryable 503, not a bare 500."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_kind_serve(rel_bundle, port, "--tile-size", "128", env={"KIND_SHUTDOWN_GRACE_S": "1"})
    try:
        wait_ready(proc, url)
        big = hostile.encode(hostile.noise(512, 384), "PNG")  # several seconds of work each
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            inflight = [pool.submit(post, url, big) for _ in range(4)]
            wait_pending(url, 4)
            sent_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in inflight]
        assert {r.status_code for r in results} <= {200, 503}
        cut = [r for r in results if r.status_code == 503]
        assert cut, "every request finished within the grace period: nothing was cut off"
        for r in cut:
            assert r.headers["content-type"] == "application/problem+json" and r.headers["retry-after"] == "1"
            assert r.json()["type"].endswith("draining")
        assert proc.wait(60) == 0, proc.stderr.read()[-3000:]
        assert time.monotonic() - sent_at < 30
    finally:
        stop(proc)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _garble_json(path: Path) -> None:
    path.write_text(path.read_text()[:-20])


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "flipped byte": (lambda d: _flip_byte(d / "decom.safetensors"), "decom.safetensors"),
    "truncated weights": (lambda d: _truncate(d / "restore.safetensors"), "restore.safetensors"),
    "missing weights": (lambda d: (d / "adjust.safetensors").unlink(), "adjust.safetensors"),
    "broken manifest": (lambda d: _garble_json(d / "manifest.json"), "manifest.json"),
}


def check_refusals(rel_bundle: Path, tmp_path: Path, labels: list[str]) -> None:
    """Damage one bundle copy per label, start ``kind serve`` on each at once: each must exit non-zero, naming
    the damaged file, without a traceback."""
    procs = {}
    for label in labels:
        damage, filename = DAMAGES[label]
        bundle = tmp_path / label.replace(" ", "-")
        shutil.copytree(rel_bundle, bundle)
        damage(bundle)
        procs[label] = (start_kind_serve(bundle, free_port()), bundle / filename)
    try:
        for label, (proc, damaged) in procs.items():
            try:
                _, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{label}: kind serve started (or hung) on a corrupt bundle")
            assert proc.returncode != 0, label
            assert str(damaged) in err, f"{label}: {err[-2000:]}"
            assert "Traceback" not in err, label
    finally:
        for proc, _ in procs.values():
            stop(proc)


def test_corrupt_bundle_refuses_to_start_naming_the_file(rel_bundle: Path, tmp_path: Path) -> None:
    check_refusals(rel_bundle, tmp_path, ["flipped byte", "broken manifest"])


@pytest.mark.slow
def test_truncated_or_missing_weights_refuse_to_start(rel_bundle: Path, tmp_path: Path) -> None:
    check_refusals(rel_bundle, tmp_path, ["truncated weights", "missing weights"])
