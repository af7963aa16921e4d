"""No client may deny service to others: slow uploads, parser bombs, unadmitted routes, greedy clients, heads.

Each test runs a real server on loopback (uvicorn in a thread, with the service's own HTTP parser options)
and plays one attack while a well-behaved client keeps using the service; what a user would notice is
asserted: the attacker gets the documented refusal (problem+json), the other client gets its answers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from kind_serve.service.config import Settings
from kind_serve.service.worker import Worker

from . import hostile
from .conftest import ThreadServer, metric, rel_settings

TIMEOUT = httpx.Timeout(60.0)
PNG = hostile.encode(hostile.noise(), "PNG")
TOKEN_A, TOKEN_B = "greedy-client-token-aaaa", "polite-client-token-bbbb"


def enhance(url: str, body: bytes = PNG, token: str | None = None) -> httpx.Response:
    headers = {"content-type": "image/png", **({"authorization": f"Bearer {token}"} if token else {})}
    return httpx.post(
        f"{url}/enhance", params={"alpha": "2", "mode": "paper"}, content=body, headers=headers, timeout=TIMEOUT
    )


def store(url: str, body: bytes, token: str | None = None) -> httpx.Response:
    headers = {"content-type": "image/png", **({"authorization": f"Bearer {token}"} if token else {})}
    return httpx.post(f"{url}/images", content=body, headers=headers, timeout=TIMEOUT)


def check_problem(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + kind), response.json()


def read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while True:
        try:
            more = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not more:
            break
        answer += more
    return answer


class Gate:
    """Wraps ``Worker.compute`` so a test can hold the worker (requests then stay admitted) and let it go."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        original = Worker.compute
        gate = self

        def compute(worker: Worker, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            gate.entered.set()
            gate.open.wait(60)
            return original(worker, *args, **kwargs)

        monkeypatch.setattr(Worker, "compute", compute)


# -- 1. slow uploads ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server(rel_bundle) -> Iterator[ThreadServer]:  # noqa: ANN001
    from kind_serve.service.config import Limits

    settings = rel_settings(rel_bundle, max_pending_requests=4)
    limits = Limits(upload_grace_s=3.0, upload_min_bytes_per_s=2000, upload_timeout_s=8.0)
    with ThreadServer(settings, limits) as srv:
        yield srv


def trickle(port: int, stop: threading.Event, every: float = 0.5) -> tuple[bytes, float]:
    """Declare a 100 000-byte body and send one byte every ``every`` s; (the answer, seconds until it came)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /enhance HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        sock.settimeout(every)
        while not stop.is_set():
            try:
                sock.sendall(b"\x00")
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                continue
        sock.settimeout(10)
        answer = read_answer(sock)
    return answer, time.monotonic() - start


def test_twenty_slow_uploads_do_not_lock_out_normal_requests(slow_server: ThreadServer) -> None:
    """20 clients trickle bodies at 2 bytes/s (more than 4× the admission slots): normal requests get 200
    meanwhile, and each trickler gets 408 problem+json once the grace period is over."""
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        try:  # stopped before the pool joins its threads, so a failing assertion fails at once
            slow = [pool.submit(trickle, slow_server.port, stop) for _ in range(20)]
            time.sleep(1.0)  # all 20 are connected and sending
            normal = [enhance(slow_server.url) for _ in range(3)]
            answers = [f.result(timeout=60) for f in slow]
        finally:
            stop.set()
    assert [r.status_code for r in normal] == [200, 200, 200]
    for answer, took in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"application/problem+json" in answer and b"upload-timeout" in answer
        assert took < 3.0 + 3.0, f"the slow upload was cut after {took:.1f} s (grace 3 s)"
    text = httpx.get(slow_server.url + "/metrics", timeout=TIMEOUT).text
    assert metric(text, "kind_failures_total", reason="upload_timeout") >= 20
    assert metric(text, "kind_pending_requests") == 0


def test_whole_body_deadline_cuts_an_upload_that_keeps_its_rate(slow_server: ThreadServer) -> None:
    """5 kB/s (above the minimum rate) for a 100 kB body: cut at the 8 s whole-body deadline."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=30) as sock:
        sock.sendall(b"POST /images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        sock.settimeout(0.1)
        answer = b""
        while time.monotonic() - start < 20 and not answer:
            try:
                sock.sendall(b"\x00" * 500)
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(10)
        answer += read_answer(sock)
    took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 7.5 <= took < 12, took


# -- 3. parser bombs --------------------------------------------------------------------------------------

BOMBS = hostile.parser_bombs()


@pytest.fixture(scope="module")
def server(rel_bundle) -> Iterator[ThreadServer]:  # noqa: ANN001
    settings = rel_settings(rel_bundle)
    with ThreadServer(settings) as srv:
        yield srv


@pytest.mark.parametrize("path", ["/images", "/enhance"])
def test_parser_bombs_are_refused_while_livez_answers(server: ThreadServer, path: str) -> None:
    """Every structure bomb gets 422 (too-complex-image); /livez, polled throughout, never stalls."""
    stop = threading.Event()
    probes: list[float] = []

    def poll() -> None:
        while not stop.is_set():
            t = time.monotonic()
            assert httpx.get(server.url + "/livez", timeout=TIMEOUT).status_code == 200
            probes.append(time.monotonic() - t)
            time.sleep(0.02)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        poller = pool.submit(poll)
        try:  # the poller stops before the pool joins it, so a failing assertion fails at once
            for case in BOMBS:
                response = httpx.post(
                    server.url + path, content=case.body, headers={"content-type": case.content_type}, timeout=TIMEOUT
                )
                check_problem(response, 422, "too-complex-image")
                assert "more than" in response.json()["detail"]
        finally:
            stop.set()
        poller.result()
    # the 422 kind shows no decoder ran; the bound is loose because this 2-core machine is shared (the
    # benchmark, tests/benchmarks/bench_abuse.py, measures the probe latency itself)
    assert len(probes) >= 2 and max(probes) < 10.0, f"/livez took up to {max(probes):.2f} s"


def test_stored_image_is_served_without_parsing_it_again(server: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from kind_serve.service import imaging

    body = hostile.encode(hostile.noise(seed=7), "JPEG")
    created = store(server.url, body)
    assert created.status_code == 201
    opened: list[bytes] = []
    original = imaging._open
    monkeypatch.setattr(imaging, "_open", lambda data, *a: opened.append(data) or original(data, *a))
    got = httpx.get(server.url + created.json()["links"]["image"], timeout=TIMEOUT)
    assert got.status_code == 200 and got.content == body and got.headers["content-type"] == "image/jpeg"
    assert opened == []


# -- 2. every route that parses, stores or computes is admitted ---------------------------------------------


@contextlib.contextmanager
def gated_server(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[tuple[ThreadServer, Gate]]:
    """A server whose worker waits at the :class:`Gate` (opened again when the test ends, so nothing hangs)."""
    gate = Gate(monkeypatch)
    with ThreadServer(settings) as srv:
        yield srv, gate
        gate.open.set()


@pytest.fixture
def one_slot_server(rel_bundle, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ThreadServer, Gate]]:  # noqa: ANN001
    with gated_server(monkeypatch, rel_settings(rel_bundle, max_pending_requests=1, client_share=1.0)) as served:
        yield served


def test_store_and_cached_reads_need_a_slot(one_slot_server: tuple[ThreadServer, Gate]) -> None:
    """With the only slot held by a computing request, storing and cached component reads get 503."""
    srv, gate = one_slot_server
    gate.open.set()
    image_id = store(srv.url, PNG).json()["id"]
    assert httpx.get(f"{srv.url}/decompose", params={"image_id": image_id}, timeout=TIMEOUT).status_code == 200
    gate.open.clear()
    gate.entered.clear()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = pool.submit(enhance, srv.url)
        assert gate.entered.wait(30)
        check_problem(store(srv.url, hostile.encode(hostile.noise(seed=3), "PNG")), 503, "queue-full")
        cached = httpx.get(f"{srv.url}/decompose/{image_id}/R.png", timeout=TIMEOUT)
        check_problem(cached, 503, "queue-full")
        zipped = httpx.get(f"{srv.url}/decompose/{image_id}/all.zip", timeout=TIMEOUT)
        check_problem(zipped, 503, "queue-full")
        gate.open.set()
        assert holder.result().status_code == 200
    assert httpx.get(f"{srv.url}/decompose/{image_id}/R.png", timeout=TIMEOUT).status_code == 200


# -- 4. fairness ------------------------------------------------------------------------------------------


@pytest.fixture
def shared_server(rel_bundle, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ThreadServer, Gate]]:  # noqa: ANN001
    settings = rel_settings(
        rel_bundle,
        max_pending_requests=4,
        client_share=0.5,
        auth_tokens=[TOKEN_A, TOKEN_B],
        store_max_bytes=1024 * 1024,
    )
    with gated_server(monkeypatch, settings) as served:
        yield served


def test_greedy_client_cannot_take_the_other_clients_slots(shared_server: tuple[ThreadServer, Gate]) -> None:
    """Client A sends 20 requests at once (10× its share of 2 slots) while the worker is held: A gets 2
    admitted and 429s for the rest; client B's 2 requests are admitted and answered 200."""
    srv, gate = shared_server
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        greedy = [pool.submit(enhance, srv.url, PNG, TOKEN_A) for _ in range(20)]
        assert gate.entered.wait(30)
        time.sleep(1.0)
        polite = [pool.submit(enhance, srv.url, PNG, TOKEN_B) for _ in range(2)]
        time.sleep(1.0)
        gate.open.set()
        greedy_status = sorted(f.result().status_code for f in greedy)
        polite_status = [f.result().status_code for f in polite]
    assert polite_status == [200, 200]
    assert greedy_status.count(200) == 2 and greedy_status.count(429) == 18, greedy_status
    text = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=TIMEOUT).text
    assert metric(text, "kind_failures_total", reason="client_share") == 18


def test_greedy_client_cannot_evict_the_other_clients_images(shared_server: tuple[ThreadServer, Gate]) -> None:
    """A stores images until refused (429 at half of a 1 MiB store); B's image is still there."""
    srv, gate = shared_server
    gate.open.set()
    import numpy as np

    def big(seed: int) -> bytes:  # ~150 kB of incompressible PNG
        rng = np.random.default_rng(seed)
        from PIL import Image

        return hostile.encode(Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)), "PNG")

    kept = store(srv.url, big(100), TOKEN_B)
    assert kept.status_code == 201
    statuses = [store(srv.url, big(seed), TOKEN_A).status_code for seed in range(12)]
    assert statuses[:3] == [201, 201, 201] and 429 in statuses, statuses
    refused = store(srv.url, big(50), TOKEN_A)
    check_problem(refused, 429, "client-share")
    assert int(refused.headers["retry-after"]) >= 1
    headers = {"authorization": f"Bearer {TOKEN_B}"}
    assert httpx.get(srv.url + kept.json()["links"]["image"], headers=headers, timeout=TIMEOUT).status_code == 200


# -- 5. header limits -------------------------------------------------------------------------------------


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return read_answer(sock)


def test_oversized_request_head_gets_431(server: ThreadServer) -> None:
    long_line = b"GET /livez?" + b"a" * 2_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    huge_header = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 2_000_000 + b"\r\n\r\n"
    for request in (long_line, huge_header):
        answer = raw(server.port, request)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b"application/problem+json" in answer


def test_too_many_header_fields_get_431(server: ThreadServer) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(2000))
    answer = raw(server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(150))  # fits in the bytes limit, not in the count
    answer = raw(server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"header fields" in answer
    assert httpx.get(server.url + "/livez", timeout=TIMEOUT).status_code == 200


# -- decoding under the deadline, bodies under the upload budget -------------------------------------------


def test_a_slow_decode_is_answered_at_the_deadline(rel_bundle) -> None:  # noqa: ANN001
    """A decode that takes seconds (a 4096² progressive JPEG whose last scan repeats 90 times, within the
    pre-scan's limit: 1.2–4 s here) gets 504 at the 0.5 s request deadline; its decoder process is killed
    then, and the slot freed."""
    settings = Settings(checkpoint=rel_bundle, device="cpu", json_logs=False, warmup=False, request_timeout_s=0.5)
    slow = hostile.jpeg_scan_bomb(4096, 90)
    with ThreadServer(settings) as srv:
        start = time.monotonic()
        response = enhance(srv.url, slow)
        took = time.monotonic() - start
        check_problem(response, 504, "timeout")
        assert took < 3.0, f"answered after {took:.1f} s"
        text = httpx.get(srv.url + "/metrics", timeout=TIMEOUT).text
        assert metric(text, "kind_pending_requests") == 0
        assert metric(text, "kind_decoder_restarts_total", reason="deadline") == 1


@pytest.mark.parametrize(
    ("share", "size", "status", "kind", "reason"),
    [(1.0, 700_000, 503, "upload-budget", "upload_budget"), (0.5, 400_000, 429, "client-share", "client_share")],
    ids=["whole budget", "the client's share"],
)
def test_bodies_beyond_the_upload_budget_are_refused(
    rel_bundle,  # noqa: ANN001
    share: float,
    size: int,
    status: int,
    kind: str,
    reason: str,
) -> None:
    """With a 1 MiB budget, a second body sent while the first is still arriving is refused: 503 when both do
    not fit the budget, 429 when they do but not this client's half of it; the first completes normally."""
    from kind_serve.service.config import Limits

    settings = Settings(checkpoint=rel_bundle, device="cpu", json_logs=False, warmup=False, client_share=share)
    limits = Limits(upload_budget_bytes=1024 * 1024)
    head = f"POST /images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {size}\r\n\r\n".encode()
    with ThreadServer(settings, limits) as srv, socket.create_connection(("127.0.0.1", srv.port), timeout=30) as first:
        first.sendall(head + b"\x00" * (size - 10))  # all but the last 10 bytes: held by the gate
        time.sleep(0.5)
        second = httpx.post(srv.url + "/images", content=b"\x00" * size, timeout=TIMEOUT)
        check_problem(second, status, kind)
        first.sendall(b"\x00" * 10)
        answer = read_answer(first)
        assert answer.startswith(b"HTTP/1.1 415"), answer[:200]  # received in full, then refused as not an image
        text = httpx.get(srv.url + "/metrics", timeout=TIMEOUT).text
        assert metric(text, "kind_failures_total", reason=reason) == 1
