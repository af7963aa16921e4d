"""Issue 25 at the HTTP edge: connections, client identity, what a client may store, the docs pages.

Each test runs a real server on loopback (uvicorn in a thread with the service's own server options, or
``kind serve``) and plays one attack from the issue; every loop is bounded and every helper stops by itself.

- connections: an idle connection and a request head trickled byte by byte are cut by their timeouts, and
  connections beyond ``max_connections`` are refused, while a normal client keeps its answers;
- client identity: ``X-Forwarded-For`` from a peer that is not a listed proxy neither renames the client nor
  buys it another share;
- the store share: decompositions and job results count against the share of the client who caused them,
  so they cannot evict another client's image;
- ``/docs`` and ``/redoc`` carry the demo page's security headers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from kind_serve.service.config import Limits, Settings

from . import hostile
from .conftest import ThreadServer, metric, rel_settings

TIMEOUT = httpx.Timeout(60.0)
TOKEN_A, TOKEN_B = "greedy-client-token-aaaa", "polite-client-token-bbbb"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def noisy_png(seed: int, side: int = 224) -> bytes:
    """~150 kB of incompressible PNG: its decomposition is as large."""
    rng = np.random.default_rng(seed)
    return hostile.encode(Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)), "PNG")


def store(url: str, body: bytes, token: str) -> httpx.Response:
    headers = {"content-type": "image/png", **bearer(token)}
    return httpx.post(f"{url}/images", content=body, headers=headers, timeout=TIMEOUT)


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection; fails if it is still open after ``limit_s``."""
    answer, took = hostile.until_closed(sock, limit_s)
    if took is None:
        raise AssertionError(f"the connection was still open after {limit_s:g} s; received {answer[:200]!r}")
    return answer, took


# -- connections: idle, trickled heads, too many ----------------------------------------------------------


@pytest.fixture(scope="module")
def timed(rel_bundle) -> Iterator[ThreadServer]:  # noqa: ANN001
    limits = Limits(idle_timeout_s=1, header_timeout_s=2.0, max_connections=8)
    with ThreadServer(rel_settings(rel_bundle), limits) as srv:
        yield srv


def test_an_idle_connection_is_closed_before_its_first_request(timed: ThreadServer) -> None:
    """A connection that never sends a byte is closed after idle_timeout_s (1 s), with nothing sent."""
    with socket.create_connection(("127.0.0.1", timed.port)) as sock:
        answer, took = read_until_closed(sock, 8.0)
    assert answer == b"" and took < 1 + 2, took


@pytest.mark.parametrize("after_a_response", [False, True], ids=["first request", "keep-alive request"])
def test_a_trickled_request_head_gets_408(timed: ThreadServer, after_a_response: bool) -> None:
    """A request head sent one byte every 0.3 s (each byte within the idle timeout) is answered 408
    problem+json header_timeout_s (2 s) after its first byte, and the connection is closed."""
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 60 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", timed.port)) as sock:
        if after_a_response:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        answer = hostile.trickle(sock, head, 0.3)  # bounded: 80 bytes, 0.3 s each
        took = time.monotonic() - start
        with contextlib.suppress(AssertionError):
            answer += read_until_closed(sock, 5.0)[0]
    assert answer.startswith(b"HTTP/1.1 408"), f"after {took:.1f} s: {answer[:200]!r}"
    assert b"application/problem+json" in answer and b"header-timeout" in answer
    assert took < 2 + 2, took
    text = httpx.get(timed.url + "/metrics", timeout=TIMEOUT).text
    assert metric(text, "kind_failures_total", reason="header_timeout") >= 1


def test_connections_beyond_the_limit_are_refused_and_others_served_after(rel_bundle) -> None:  # noqa: ANN001
    """8 connections (max_connections) sending a head slowly: a 9th gets 503 problem+json at once and is closed;
    once the 8 are cut by the header timeout, a normal request gets 200."""
    limits = Limits(header_timeout_s=3.0, max_connections=8)
    with ThreadServer(rel_settings(rel_bundle), limits) as srv, contextlib.ExitStack() as held:
        for _ in range(8):
            sock = held.enter_context(socket.create_connection(("127.0.0.1", srv.port)))
            sock.sendall(b"GET /livez HTTP/1.1\r\n")  # keeps the idle timer off; the head timer runs
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", srv.port)) as ninth:
            answer, took = read_until_closed(ninth, 2.0)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"too-many-connections" in answer and b"retry-after" in answer.lower()
        time.sleep(3.5)  # the 8 heads are past their timeout
        assert httpx.get(srv.url + "/livez", timeout=TIMEOUT).status_code == 200
        text = httpx.get(srv.url + "/metrics", timeout=TIMEOUT).text
        assert metric(text, "kind_failures_total", reason="too_many_connections") == 1
        assert metric(text, "kind_failures_total", reason="header_timeout") == 8


# -- X-Forwarded-For from a peer that is not a listed proxy ---------------------------------------------


def test_spoofed_forwarded_for_buys_no_second_share(rel_bundle) -> None:  # noqa: ANN001
    """With default settings, one loopback client stores ~150 kB images, each with another X-Forwarded-For, into
    a 1 MiB store: refused 429 past its half, as without the header. With 127.0.0.1 listed as a proxy, the
    header names the client, so the same uploads count as eight clients."""
    bodies = [noisy_png(seed) for seed in range(8)]

    def statuses(settings: Settings) -> list[int]:
        with ThreadServer(settings) as srv:
            return [
                httpx.post(
                    srv.url + "/images",
                    content=body,
                    headers={"content-type": "image/png", "x-forwarded-for": f"203.0.113.{i}"},
                    timeout=TIMEOUT,
                ).status_code
                for i, body in enumerate(bodies)
            ]

    spoofed = statuses(rel_settings(rel_bundle, store_max_bytes=1024 * 1024, client_share=0.5))
    assert spoofed[:3] == [201, 201, 201] and spoofed[-1] == 429, spoofed
    proxied = statuses(
        rel_settings(rel_bundle, store_max_bytes=1024 * 1024, client_share=0.5, trusted_proxies="127.0.0.1")
    )
    assert proxied == [201] * 8, proxied


@pytest.mark.parametrize("value", ["*", "proxy.example", "10.0.0.0/33"])
def test_a_trusted_proxy_must_be_an_address_or_network(rel_bundle, value: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="trusted proxies"):
        rel_settings(rel_bundle, trusted_proxies=value)


# -- derived results are charged to the client that caused them ---------------------------------------------


@pytest.fixture
def two_clients(rel_bundle) -> Iterator[ThreadServer]:  # noqa: ANN001
    """Two tokens sharing a 1 MiB in-process store, half of it each."""
    settings = rel_settings(
        rel_bundle,
        client_share=0.5,
        auth_tokens=[TOKEN_A, TOKEN_B],
        store_max_bytes=1024 * 1024,
        max_jobs=4,
    )
    with ThreadServer(settings) as srv:
        yield srv


def test_cached_decompositions_cannot_evict_another_clients_image(two_clients: ThreadServer) -> None:
    """A stores one image and asks for its decomposition at 8 light levels (8 cached zips, over 1 MiB together):
    every one is answered, and B's image, stored first, is still served."""
    url = two_clients.url
    kept = store(url, noisy_png(100), TOKEN_B)
    assert kept.status_code == 201
    image_id = store(url, noisy_png(1), TOKEN_A).json()["id"]
    sizes = []
    for alpha in range(1, 9):
        zipped = httpx.get(
            f"{url}/decompose/{image_id}/all.zip",
            params={"alpha": alpha, "mode": "paper"},
            headers=bearer(TOKEN_A),
            timeout=TIMEOUT,
        )
        assert zipped.status_code == 200, zipped.text[:300]
        sizes.append(len(zipped.content))
    assert sum(sizes) > 1024 * 1024, sizes  # without a share these alone would have filled the store
    got = httpx.get(url + kept.json()["links"]["image"], headers=bearer(TOKEN_B), timeout=TIMEOUT)
    assert got.status_code == 200, "A's cached decompositions evicted B's image"


def wait_job(url: str, job_id: str, token: str, limit_s: float = 120) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        record = httpx.get(f"{url}/jobs/{job_id}", headers=bearer(token), timeout=TIMEOUT).json()
        if record["state"] in ("done", "failed", "cancelled"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {limit_s:g} s")


def test_job_results_cannot_evict_another_clients_image(two_clients: ThreadServer) -> None:
    """A runs 8 decomposition jobs (8 stored zips, over 1 MiB together): the jobs past A's half of the store
    fail with 429 client-share, and B's image is still served."""
    url = two_clients.url
    kept = store(url, noisy_png(100), TOKEN_B)
    assert kept.status_code == 201
    body = noisy_png(1)
    states, sizes = [], []
    for alpha in range(1, 9):
        created = httpx.post(
            f"{url}/jobs",
            params={"op": "decompose", "alpha": alpha, "mode": "paper"},
            content=body,
            headers={"content-type": "image/png", **bearer(TOKEN_A)},
            timeout=TIMEOUT,
        )
        assert created.status_code in (202, 429), created.text[:300]
        if created.status_code == 429:
            states.append("refused")
            continue
        record = wait_job(url, created.json()["id"], TOKEN_A)
        states.append(record["state"])
        if record["state"] == "done":
            result = httpx.get(f"{url}/jobs/{record['id']}/result", headers=bearer(TOKEN_A), timeout=TIMEOUT)
            sizes.append(len(result.content))
        else:
            assert record["error"]["status"] == 429 and record["error"]["type"].endswith("/client-share"), record
    assert states[0] == "done" and states[-1] != "done", (states, sizes)
    assert sum(sizes) <= 1024 * 1024 // 2, sizes
    got = httpx.get(url + kept.json()["links"]["image"], headers=bearer(TOKEN_B), timeout=TIMEOUT)
    assert got.status_code == 200, "A's job results evicted B's image"


# -- /docs and /redoc: the demo page's headers -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_docs_pages_forbid_framing_and_foreign_scripts(timed: ThreadServer, path: str) -> None:
    """CSP keeping the page to this origin (its inline scripts admitted only by their hashes), no framing,
    nosniff, no referrer; every script and stylesheet the page names is served here."""
    page = httpx.get(timed.url + path, timeout=TIMEOUT)
    assert page.status_code == 200
    csp = page.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, csp
    assert "object-src 'none'" in csp and "base-uri 'none'" in csp
    assert page.headers.get("x-frame-options") == "DENY"
    assert page.headers.get("x-content-type-options") == "nosniff"
    assert page.headers.get("referrer-policy") == "no-referrer"
    script_src = re.search(r"script-src ([^;]*)", csp)
    assert script_src is not None and "unsafe" not in script_src.group(1)
    for text in re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in script_src.group(1)
    for url in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert url.startswith("/"), url
        assert httpx.get(timed.url + url, timeout=TIMEOUT).status_code == 200, url
