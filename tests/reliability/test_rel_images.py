"""Hostile and odd uploads against a real server: the documented 4xx or a correct image, never a 5xx or a hang.

Each case of :mod:`tests.reliability.hostile` goes to ``POST /enhance`` (α = auto, the longest path) and the
refusals also to ``POST /images``; every request has a client timeout, and ``/readyz`` must still answer 200
after the whole set. Oversized uploads are streamed over a raw socket to show the 413 comes while the
client is still sending, not after the server has buffered everything.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from . import hostile
from .conftest import ThreadServer, rel_settings

MAX_MEGAPIXELS = 4.0
UPLOAD_LIMIT = 2 * 1024 * 1024
TIMEOUT = httpx.Timeout(30.0)
CASES = hostile.cases(MAX_MEGAPIXELS)


@pytest.fixture(scope="module")
def server(rel_bundle: Path) -> Iterator[ThreadServer]:
    settings = rel_settings(
        rel_bundle,
        max_megapixels=MAX_MEGAPIXELS,
        max_upload_bytes=UPLOAD_LIMIT,
        request_timeout_s=30,
    )
    with ThreadServer(settings) as srv:
        yield srv


def send(url: str, case: hostile.Case, path: str = "/enhance", **params: str) -> httpx.Response:
    if case.filename is not None:
        files = {"file": (case.filename, case.body, case.content_type)}
        return httpx.post(url + path, params=params, files=files, timeout=TIMEOUT)
    headers = {"content-type": case.content_type}
    return httpx.post(url + path, params=params, content=case.body, headers=headers, timeout=TIMEOUT)


def check_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"] and "Traceback" not in response.text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_enhance_answers_hostile_and_odd_images(server: ThreadServer, case: hostile.Case) -> None:
    response = send(server.url, case)
    if isinstance(case.expect, int):
        check_problem(response, case.expect)
        return
    assert response.status_code == 200, response.text[:500]
    out = Image.open(io.BytesIO(response.content))
    assert out.format == "PNG" and out.mode == "RGB"
    assert out.size == case.expect
    assert 0.1 <= float(response.headers["x-alpha"]) <= 20


# the store reads headers only: bodies whose header is intact are stored, and refused later by /enhance
BROKEN_AFTER_HEADER = {
    "truncated PNG (60%)",
    "truncated JPEG (60%)",
    "JPEG without its end marker",
    "truncated HEIC (60%)",
    "HEIC bomb: 100000² coded behind a 48×32 crop",  # libheif's own size limit refuses it when decoding
}
REFUSALS = [c for c in CASES if isinstance(c.expect, int) and c.name not in BROKEN_AFTER_HEADER]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.name for c in REFUSALS])
def test_store_refuses_what_enhance_refuses(server: ThreadServer, case: hostile.Case) -> None:
    check_problem(send(server.url, case, "/images"), case.expect)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_image(server: ThreadServer, orientation: int) -> None:
    """The result for an EXIF-tagged JPEG equals the result for the same pixels already turned upright."""
    tagged = hostile.exif_jpeg(orientation)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(tagged)))
    reference = hostile.Case("upright", hostile.encode(upright, "PNG"), "image/png")
    got = send(server.url, hostile.Case("tagged", tagged, "image/jpeg"), alpha="2.5")
    want = send(server.url, reference, alpha="2.5")
    assert got.status_code == want.status_code == 200
    a = np.asarray(Image.open(io.BytesIO(got.content)), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(want.content)), dtype=np.int16)
    assert a.shape == b.shape == ((hostile.W, hostile.H, 3) if orientation >= 5 else (hostile.H, hostile.W, 3))
    assert np.abs(a - b).max() <= 1


def _stream_until_answer(port: int, head: bytes, chunk: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head`` then ``chunk``s until ``total`` bytes went out or the server answers; (answer, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        deadline = time.monotonic() + 30
        while sent < total and time.monotonic() < deadline:
            try:
                answer += sock.recv(65536)
                if answer:
                    break
            except BlockingIOError:
                pass
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(10)
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return answer, sent


def test_chunked_upload_over_the_limit_is_refused_while_streaming(server: ThreadServer) -> None:
    """A 200 MiB chunked upload (no Content-Length) gets 413 after about the limit, not after 200 MiB."""
    payload = b"\x00" * 65536
    chunk = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
    head = b"POST /enhance HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    total = 200 * 1024 * 1024
    answer, sent = _stream_until_answer(server.port, head, chunk, total)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16 * UPLOAD_LIMIT, f"the server read {sent} bytes before refusing"


def test_declared_oversized_upload_is_refused_before_the_body(server: ThreadServer) -> None:
    """A Content-Length over the limit is refused without the client sending any body at all."""
    head = (
        b"POST /enhance HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {10 * 1024**3}\r\n\r\n".encode()
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_multipart_upload_over_the_limit_is_refused(server: ThreadServer) -> None:
    files = {"file": ("big.png", b"\x89PNG" + b"\x00" * (UPLOAD_LIMIT + 1024), "image/png")}
    check_problem(httpx.post(server.url + "/enhance", files=files, timeout=TIMEOUT), 413)


def test_server_stays_ready_and_correct_after_the_hostile_set(server: ThreadServer) -> None:
    for case in REFUSALS:  # the refusals again, in one go, so this test alone also shows the end state
        assert send(server.url, case).status_code == case.expect
    assert httpx.get(server.url + "/readyz", timeout=TIMEOUT).status_code == 200
    ok = send(server.url, hostile.Case("plain", hostile.encode(hostile.noise(), "PNG"), "image/png"))
    assert ok.status_code == 200
    assert Image.open(io.BytesIO(ok.content)).size == (hostile.W, hostile.H)
