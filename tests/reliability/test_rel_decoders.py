"""Decoder containment (issue 25): small files that cost gigabytes to decode, against a real ``kind serve``.

Each attack is sent to a ``kind serve`` subprocess on loopback; the server's own peak RSS (``VmHWM`` of its
main process, where every decode ran before :mod:`service.decoding`) is read before and after, and a second
client's small request must be served meanwhile. Generators: :mod:`tests.reliability.decoder_bombs`.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from . import decoder_bombs, hostile
from .conftest import free_port, metric, start_kind_serve, stop, wait_ready

TIMEOUT = httpx.Timeout(120.0)
TOKEN_A, TOKEN_B = "attacking-client-token-aaaa", "ordinary-client-token-bbbb"
SMALL = hostile.encode(hostile.noise(64, 64), "PNG")
# the main process may grow by this much during an attack: its own work on a 64×64 image and a refusal
MAIN_GROWTH_MB = 300


class Server:
    def __init__(self, bundle: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = start_kind_serve(
            bundle, self.port, "--tile-size", "128", env={"KIND_AUTH_TOKENS": f"{TOKEN_A},{TOKEN_B}", **env}
        )

    def status(self, field: str) -> int:
        """A ``/proc/PID/status`` figure of the server's main process, in MiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
        raise KeyError(field)

    def post(self, path: str, body: bytes, token: str = TOKEN_A) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}", "content-type": "application/octet-stream"}
        return httpx.post(
            f"{self.url}{path}", params={"alpha": "2", "mode": "paper"}, content=body, headers=headers, timeout=TIMEOUT
        )

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", headers={"authorization": f"Bearer {TOKEN_A}"}, timeout=TIMEOUT).text


@pytest.fixture
def serve(rel_bundle: Path) -> Iterator:  # noqa: ANN001
    started: list[Server] = []

    def make(**env: str) -> Server:
        server = Server(rel_bundle, **env)
        started.append(server)
        wait_ready(server.proc, server.url)
        return server

    try:
        yield make
    finally:
        for server in started:
            stop(server.proc)


def attack_while_served(server: Server, path: str, bomb: bytes) -> tuple[httpx.Response, float, httpx.Response]:
    """The bomb from client A and, while it is in progress, a 64×64 PNG from client B."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        start = time.monotonic()
        attack = pool.submit(server.post, path, bomb, TOKEN_A)
        time.sleep(0.3)
        other = server.post("/enhance", SMALL, TOKEN_B)
        answer = attack.result()
        return answer, time.monotonic() - start, other


def check_contained(response: httpx.Response, statuses: tuple[int, ...]) -> None:
    assert response.status_code in statuses, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/enhance", "/images"])
def test_a_tiff_lying_about_its_tile_costs_at_most_the_decode_cap(serve, path: str) -> None:  # noqa: ANN001
    """187 bytes declaring a 64×64 image in one 25008² deflate tile (1.9 GB for the codec's buffer): refused
    (413 over the 512 MiB decode cap, or 422), the server's main process does not grow, B is served."""
    server = serve(KIND_DECODE_MEMORY_MB="512")
    bomb = decoder_bombs.tiff_lying_tile()
    assert len(bomb) < 200
    before = server.status("VmHWM")
    answer, took, other = attack_while_served(server, path, bomb)
    check_contained(answer, (413, 422))
    assert took < 30, f"answered after {took:.1f} s"
    assert other.status_code == 200, other.text[:300]
    grew = server.status("VmHWM") - before
    assert grew < MAIN_GROWTH_MB, f"the server's peak RSS grew by {grew} MiB"
    text = server.metrics()
    assert (
        metric(text, "kind_decoder_restarts_total", reason="memory")
        + metric(text, "kind_decoder_restarts_total", reason="crashed")
        <= 1
    )


def test_a_gif_screen_larger_than_a_clients_share_is_refused_and_others_are_served(serve) -> None:  # noqa: ANN001
    """43 bytes: a 1960² logical screen around a 1-pixel frame decodes to 3.84 MP. With the old defaults' ratio
    (in-flight budget 0.96 × the image limit) one client may hold half the budget: 413 at once naming it, and
    client B's request is served instead of 503."""
    server = serve(KIND_MAX_MEGAPIXELS="4", KIND_MAX_INFLIGHT_MEGAPIXELS="3.84")
    bomb = decoder_bombs.gif_huge_screen(1960)
    answer, took, other = attack_while_served(server, "/enhance", bomb)
    check_contained(answer, (413,))
    assert "KIND_MAX_INFLIGHT_MEGAPIXELS" in answer.json()["detail"]
    assert took < 30
    assert other.status_code == 200, other.text[:300]


def test_a_ten_million_by_one_png_is_refused_at_once(serve) -> None:  # noqa: ANN001
    """A ~10 KB PNG of 10,000,000×1 pixels (10 MP, under the limit) would cost 320 MP of 32-px canvases: 413
    within seconds, naming the shape, before any tile is built; the main process does not grow by gigabytes."""
    server = serve()
    bomb = decoder_bombs.png_strip()
    before = server.status("VmHWM")
    answer, took, other = attack_while_served(server, "/enhance", bomb)
    check_contained(answer, (413,))
    assert "10000000×1" in answer.json()["detail"]
    assert took < 15, f"answered after {took:.1f} s"
    assert other.status_code == 200, other.text[:300]
    grew = server.status("VmHWM") - before
    assert grew < MAIN_GROWTH_MB, f"the server's peak RSS grew by {grew} MiB"


def _send_and_hang_up(port: int, body: bytes, after_s: float) -> None:
    head = (
        f"POST /enhance?alpha=2&mode=paper HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        time.sleep(after_s)


def test_a_disconnect_during_a_slow_decode_stops_the_decode(serve) -> None:  # noqa: ANN001
    """A 4096² progressive JPEG whose last scan repeats 90 times (within the pre-scan's 100) decodes for
    seconds (1.2–4 s here). The client hangs up after 0.3 s: the decoder process is killed then (counted), the
    only slot is free again, and the next request is served."""
    server = serve(KIND_MAX_PENDING_REQUESTS="1", KIND_CLIENT_SHARE="1")
    slow = hostile.jpeg_scan_bomb(4096, 90)
    _send_and_hang_up(server.port, slow, after_s=0.3)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = server.metrics()
        if metric(text, "kind_decoder_restarts_total", reason="disconnected") >= 1:
            break
        time.sleep(0.1)
    assert metric(text, "kind_decoder_restarts_total", reason="disconnected") == 1
    assert metric(text, "kind_pending_requests") <= 1  # the metrics request itself is not admitted
    assert server.post("/enhance", SMALL, TOKEN_B).status_code == 200
