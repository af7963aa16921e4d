"""Security: bearer-token auth does no work for bad tokens, image ids resist path tricks, CORS is closed by
default, and responses reveal nothing beyond the documented headers.

The auth and header checks run against a real ``kind serve`` subprocess (its production uvicorn config);
the path tricks go over a raw socket (HTTP clients normalise ``..`` away) to an in-process server while an
audit hook records every file the process opens.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from . import hostile
from .conftest import REPO, ThreadServer, free_port, metric, start_kind_serve, stop, wait_ready

TOKEN = "rel-test-token-0123456789abcdef"
PNG = hostile.encode(hostile.noise(), "PNG")
PNG_ID = hashlib.sha256(PNG).hexdigest()
TIMEOUT = httpx.Timeout(60.0)

PROTECTED = [
    ("POST", "/enhance", PNG),
    ("POST", "/images", PNG),
    ("POST", "/decompose", PNG),
    ("GET", f"/images/{PNG_ID}", None),
    ("GET", f"/decompose?image_id={PNG_ID}", None),
    ("GET", f"/decompose/{PNG_ID}/all.zip", None),
    ("GET", f"/decompose/{PNG_ID}/R.png", None),
]
BAD_AUTH = {
    "missing": None,
    "bare scheme": "Bearer",
    "wrong token": "Bearer wrong-token-0123456789abcdef",
    "token prefix": "Bearer " + TOKEN[:-1],
    "token plus a byte": "Bearer " + TOKEN + "x",
    "basic scheme": "Basic " + TOKEN,
    "token without scheme": TOKEN,
}
# every header the service documents; anything else would be a leak
ALLOWED_HEADERS = {
    "content-type",
    "content-length",
    "date",
    "x-request-id",
    "x-alpha",
    "x-model-version",
    "etag",
    "vary",
    "location",
    "cache-control",
    "content-disposition",
    "retry-after",
    "www-authenticate",
    "allow",
    "connection",
    "transfer-encoding",
}


@pytest.fixture(scope="module")
def authed(rel_bundle: Path) -> Iterator[str]:
    port = free_port()
    proc = start_kind_serve(rel_bundle, port, "--tile-size", "128", env={"KIND_AUTH_TOKENS": TOKEN})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        yield url
    finally:
        stop(proc)


def work_done(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    return sum(metric(text, "kind_compute_seconds_count", op=op) for op in ("enhance", "decompose", "alpha"))


def call(url: str, method: str, path: str, body: bytes | None, auth: str | None) -> httpx.Response:
    headers = {"content-type": "image/png"} if body is not None else {}
    if auth is not None:
        headers["authorization"] = auth
    return httpx.request(method, url + path, content=body, headers=headers, timeout=TIMEOUT)


def check_headers(response: httpx.Response) -> None:
    leaked = set(response.headers) - ALLOWED_HEADERS
    assert not leaked, f"{response.request.url.path} → {response.status_code} sent {leaked}"
    assert "server" not in response.headers
    for marker in ("Traceback", 'File "', "site-packages", "uvicorn", "starlette", "torch"):
        if response.headers.get("content-type", "").startswith(("application/", "text/")):
            assert marker not in response.text, f"{marker!r} in {response.request.url.path}: {response.text[:300]}"


@pytest.mark.parametrize("label", list(BAD_AUTH))
def test_bad_tokens_get_401_and_no_work_is_done(authed: str, label: str) -> None:
    before = work_done(authed)
    for method, path, body in PROTECTED:
        r = call(authed, method, path, body, BAD_AUTH[label])
        assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text[:200]}"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == "application/problem+json" and TOKEN not in r.text
        check_headers(r)
    assert work_done(authed) == before
    # nothing was stored either: with the right token the image is still unknown
    assert call(authed, "GET", f"/images/{PNG_ID}", None, f"Bearer {TOKEN}").status_code == 404


def test_right_token_does_the_work_and_probes_stay_open(authed: str) -> None:
    before = work_done(authed)
    r = call(authed, "POST", "/enhance", PNG, f"bearer {TOKEN}")  # the scheme is case-insensitive
    assert r.status_code == 200
    check_headers(r)
    assert work_done(authed) > before  # the counter the 401 test relies on does move
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(authed + path, timeout=TIMEOUT).status_code == 200


def test_responses_reveal_no_versions_or_internals(authed: str) -> None:
    auth = f"Bearer {TOKEN}"
    responses = [
        call(authed, "GET", "/livez", None, None),
        call(authed, "GET", "/nowhere", None, auth),  # 404
        call(authed, "DELETE", "/enhance", None, auth),  # 405
        call(authed, "POST", "/enhance?alpha=bright", PNG, auth),  # 422
        call(authed, "POST", "/enhance", b"<html></html>", auth),  # 415
        call(authed, "POST", "/enhance", hostile.png_header_bomb(100_000, 100_000), auth),  # 413
        call(authed, "POST", "/enhance", PNG[:100], auth),  # 422 corrupt
        call(authed, "POST", "/images", PNG, auth),  # 201
        call(authed, "GET", f"/images/{PNG_ID}", None, auth),
        call(authed, "GET", f"/decompose?image_id={PNG_ID}", None, auth),
        call(authed, "GET", "/openapi.json", None, None),
    ]
    assert [r.status_code for r in responses] == [200, 404, 405, 422, 415, 413, 422, 201, 200, 200, 200]
    for r in responses[:-1]:
        check_headers(r)
    assert "server" not in responses[-1].headers


def raw_get(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """One request with the target sent byte for byte (no client-side normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


PATH_TRICKS = [
    ("GET", "/images/../../../../etc/passwd"),
    ("GET", "/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd"),
    ("GET", "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
    ("GET", "/images/%252e%252e%252fetc%252fpasswd"),
    ("GET", "/images/" + "..%2F" * 12 + "etc%2Fpasswd" + "0" * 4),
    ("GET", "/images/%00" + "0" * 63),
    ("GET", "/images/" + "0" * 63 + "%00"),
    ("GET", "/images/" + "A" * 64),  # upper-case hex: ids are lower-case
    ("GET", "/images/" + "g" * 64),
    ("GET", "/images/" + "0" * 65),
    ("GET", "/images/" + "0" * 8000),
    ("GET", "/images/" + "0" * 64),  # well-formed, unknown
    ("GET", "/images/%2Fetc%2Fpasswd"),
    ("GET", "/decompose?image_id=../../etc/passwd"),
    ("GET", "/decompose?image_id=%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
    ("GET", "/decompose/..%2F..%2Fetc%2Fpasswd/R.png"),
    ("GET", "/decompose/" + "0" * 64 + "/..%2F..%2Fetc%2Fpasswd.png"),
    ("POST", "/enhance?image_id=../../etc/passwd"),
    ("POST", "/enhance?image_id=/etc/passwd"),
    ("POST", "/enhance?image_id=" + "0" * 64),
]


class OpenRecorder:
    """Records the paths of files this process opens while ``active`` (audit hooks cannot be removed)."""

    def __init__(self) -> None:
        self.active = False
        self.paths: list[str] = []
        self._lock = threading.Lock()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.active and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
            with self._lock:
                self.paths.append(str(args[0]))


def test_image_ids_resist_path_tricks_and_open_no_file(make_settings) -> None:
    recorder = OpenRecorder()
    with ThreadServer(make_settings()) as server:
        raw_get(server.port, "/livez")  # first-request imports happen outside the window
        recorder.active = True
        try:
            results = [(m, t, *raw_get(server.port, t, m)) for m, t in PATH_TRICKS]
        finally:
            recorder.active = False
    for method, target, status, head in results:
        assert status in (404, 422), f"{method} {target[:80]} → {status}"
        assert b"root:" not in head
    # FastAPI reads the endpoints' own source for validation-error context; nothing else may be opened
    code = [str(REPO / "service"), sys.prefix, sys.base_prefix]
    foreign = [p for p in recorder.paths if not (p.endswith(".py") and p.startswith(tuple(code)))]
    assert foreign == [], f"files opened while answering path tricks: {foreign[:10]}"


def cors_preflight(url: str, origin: str) -> httpx.Response:
    headers = {"origin": origin, "access-control-request-method": "POST"}
    return httpx.options(f"{url}/enhance", headers=headers, timeout=TIMEOUT)


def test_cors_is_closed_by_default(make_settings) -> None:
    with ThreadServer(make_settings()) as server:
        for r in (
            cors_preflight(server.url, "https://evil.example"),
            httpx.get(f"{server.url}/livez", headers={"origin": "https://evil.example"}, timeout=TIMEOUT),
            httpx.post(f"{server.url}/enhance", content=PNG, headers={"origin": "null"}, timeout=TIMEOUT),
        ):
            assert not any(h.startswith("access-control-") for h in r.headers), dict(r.headers)


def test_configured_cors_admits_only_the_listed_origin(make_settings) -> None:
    with ThreadServer(make_settings(cors_origins=["https://app.example"])) as server:
        foreign = cors_preflight(server.url, "https://evil.example")
        assert "access-control-allow-origin" not in foreign.headers
        listed = cors_preflight(server.url, "https://app.example")
        assert listed.headers["access-control-allow-origin"] == "https://app.example"


def test_problem_bodies_hold_only_documented_fields(authed: str) -> None:
    r = call(authed, "POST", "/enhance?alpha=99&mode=none", PNG, f"Bearer {TOKEN}")
    assert r.status_code == 422
    body = json.loads(r.text)
    assert set(body) <= {"type", "title", "status", "detail", "instance", "request_id", "errors"}
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])
