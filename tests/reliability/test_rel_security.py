"""Security: bearer-token auth does no work for bad tokens, image ids resist path tricks, CORS is closed by
default, responses reveal nothing beyond the documented headers, ``kind serve`` refuses to open the network
without tokens and never prints a secret, plain-text logs cannot be forged, and a tampered Redis (locked down
by the shipped ACL) cannot make the service serve forged data.

The auth, header, start-up and log checks run against a real ``kind serve`` subprocess (its production uvicorn
config); the path tricks go over a raw socket (HTTP clients normalise ``..`` away) to an in-process server while
an audit hook records every file the process opens; the Redis checks run the image's own start-redis.sh.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

import kind_serve.service

from . import hostile
from .conftest import REPO, ThreadServer, free_port, kind_serve_command, metric, start_kind_serve, stop, wait_ready

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
    "x-exposure-gain",
    "x-model-version",
    "x-quality",
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
    "x-content-type-options",
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
    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT).text
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
    for path in ("/livez", "/readyz"):
        assert httpx.get(authed + path, timeout=TIMEOUT).status_code == 200
    for path in ("/metrics", "/openapi.json", "/docs", "/redoc"):  # these follow the API's auth
        assert call(authed, "GET", path, None, None).status_code == 401, path
        assert call(authed, "GET", path, None, f"Bearer {TOKEN}").status_code == 200, path


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
        call(authed, "GET", "/openapi.json", None, auth),
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
    # (the package as imported: the repository's service/, or a link to it from scripts/package-path.sh)
    code = [str(REPO / "service"), str(Path(kind_serve.service.__file__).parent), sys.prefix, sys.base_prefix]
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
    bodies = []
    for query in ("alpha=99", "mode=none", "alpha=99&mode=none"):
        r = call(authed, "POST", f"/enhance?{query}", PNG, f"Bearer {TOKEN}")
        assert r.status_code == 422, query
        bodies.append(json.loads(r.text))
    assert any("errors" in body for body in bodies)  # a validation error lists its causes
    for body in bodies:
        assert set(body) <= {"type", "title", "status", "detail", "instance", "request_id", "errors"}
        assert all(set(e) == {"loc", "msg", "type"} for e in body.get("errors", []))


# ---------------------------------------------------------------- start-up: no open network, no printed secret


def run_kind_serve(bundle: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``kind serve`` expected to refuse to start: its exit status and output."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KIND_")}
    full_env = {**inherited, "KIND_DEVICE": "cpu", "KIND_WARMUP": "false", "OMP_NUM_THREADS": "1", **env}
    command = kind_serve_command(free_port(), "--checkpoint", str(bundle), *args)
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120)


def test_kind_serve_refuses_the_network_without_tokens(rel_bundle: Path) -> None:
    result = run_kind_serve(rel_bundle, "--host", "0.0.0.0", env={})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "KIND_AUTH_TOKENS" in result.stderr and "KIND_ALLOW_ANONYMOUS_NETWORK_ACCESS" in result.stderr
    assert "Traceback" not in result.stderr


SECRET = "this-token-is-long-enough-and-must-stay-secret-0123456789"


def test_kind_serve_names_a_bad_token_and_prints_none_of_them(rel_bundle: Path) -> None:
    """One short token among long ones must not expose the long ones (pydantic would echo the whole input)."""
    result = run_kind_serve(rel_bundle, env={"KIND_AUTH_TOKENS": f"{SECRET},short"})
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "auth_tokens (KIND_AUTH_TOKENS): auth tokens must be at least 16 characters" in output, output[-2000:]
    assert SECRET[:16] not in output and "input_value" not in output and "short" not in output.split(":", 1)[1]


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"KIND_STORE_KEY": SECRET[:24]}, "KIND_STORE_KEY"),
        ({"KIND_REDIS_URL": f"http://kind:{SECRET}@redis:6379/0", "KIND_STORE_KEY": SECRET}, "KIND_REDIS_URL"),
        ({"KIND_AUTH_TOKENS": f'["{SECRET}", "with a space {SECRET}"]'}, "KIND_AUTH_TOKENS"),
        ({"KIND_REDIS_PASSWORD_FILE": f"/nonexistent/{SECRET}"}, "KIND_REDIS_PASSWORD_FILE"),
    ],
    ids=["store key", "redis url", "token list", "unreadable secret file"],
)
def test_the_cli_names_the_bad_setting_and_prints_no_secret(monkeypatch, capsys, env, setting) -> None:
    """The same entry point in-process (the start-up refusal comes before any model is loaded)."""
    from kind_serve.service.__main__ import main

    for key in [k for k in os.environ if k.startswith("KIND_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["serve"]) == 2
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert f"{setting}" in output, output
    assert SECRET[:16] not in output and "input_value" not in output


# ---------------------------------------------------------------- logs


def test_plain_text_logs_cannot_be_forged(rel_bundle: Path) -> None:
    port = free_port()
    proc = start_kind_serve(rel_bundle, port, env={"KIND_JSON_LOGS": "false"})
    forged = "2026-01-01 00:00:00,000 WARNING service: forged"
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}")
        status, _ = raw_get(port, "/livez%0A" + forged.replace(" ", "%20") + "%0D%1B[2K")
        assert status == 404
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        stop(proc)
    lines = stderr.splitlines()
    access = [line for line in lines if "GET /livez" in line]
    assert len(access) == 1, stderr[-3000:]
    assert "\\nWARNING" not in access[0] and "/livez\\n2026-01-01" in access[0] and "\\x1b[2K" in access[0]
    assert not any(line.startswith(forged) for line in lines)
    assert not any("\x1b" in line or "\r" in line for line in lines)


# ---------------------------------------------------------------- Redis, locked down and tampered with


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """Redis started by the image's own start-redis.sh (its ACL and protected mode) on a free loopback port."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it as root)")
    password = "rel-redis-password-0123456789"
    (tmp_path / "redis_password").write_text(password + "\n")
    port = free_port()
    env = {**os.environ, "REDIS_PASSWORD_FILE": str(tmp_path / "redis_password")}
    script = REPO / "docker" / "redis" / "start-redis.sh"
    args = ["--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(["sh", str(script), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = redis.Redis(port=port, username="kind", password=password, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"start-redis.sh failed: {proc.stderr.read()[-2000:]!r}") from None
                time.sleep(0.05)
        yield port, password
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_the_service_works_within_the_redis_acl_and_ignores_tampered_entries(make_settings, locked_redis) -> None:
    port, password = locked_redis
    settings = make_settings(
        redis_url=f"redis://kind@127.0.0.1:{port}/0",
        redis_password=password,
        store_key="rel-store-key-0123456789abcdef0123456789",
        auth_tokens=[TOKEN],
    )
    auth = {"authorization": f"Bearer {TOKEN}"}
    anonymous = redis.Redis(port=port, socket_timeout=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get("anything")  # no password, no access: protected mode and the disabled default user
    anonymous.close()
    with ThreadServer(settings) as server:
        url = server.url
        written = record_writes(server.app.state.store.inner)
        # every command the service sends is in the ACL: store, fetch, enhance by id, decompose (cache write + read)
        stored = httpx.post(f"{url}/images", content=PNG, headers=auth, timeout=TIMEOUT)
        assert stored.status_code == 201, stored.text
        assert httpx.get(f"{url}/images/{PNG_ID}", headers=auth, timeout=TIMEOUT).content == PNG
        assert httpx.post(f"{url}/enhance?image_id={PNG_ID}&alpha=2", headers=auth, timeout=TIMEOUT).status_code == 200
        for _ in range(2):
            r = httpx.get(f"{url}/decompose/{PNG_ID}/R.png", headers=auth, timeout=TIMEOUT)
            assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
        genuine_r = r.content
        # and the job queue: submit, run, fetch, delete (stream, sorted sets, DEL)
        job = httpx.post(f"{url}/jobs?alpha=2", content=PNG, headers=auth, timeout=TIMEOUT)
        assert job.status_code == 202, job.text
        job_url = f"{url}/jobs/{job.json()['id']}"
        deadline = time.monotonic() + 60
        while (state := httpx.get(job_url, headers=auth, timeout=TIMEOUT).json()["state"]) in ("queued", "running"):
            assert time.monotonic() < deadline, "the job did not finish within the ACL"
            time.sleep(0.1)
        assert state == "done"
        assert httpx.get(f"{job_url}/result", headers=auth, timeout=TIMEOUT).status_code == 200
        assert httpx.delete(job_url, headers=auth, timeout=TIMEOUT).status_code == 200
        assert httpx.get(job_url, headers=auth, timeout=TIMEOUT).status_code == 404
        # an intruder holding the service's own Redis password overwrites every entry it can reach
        intruder = redis.Redis(port=port, username="kind", password=password, socket_timeout=2)
        forged_png = hostile.encode(hostile.noise(seed=99), "PNG")
        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("R.png", b"\0" * 50_000_000)
            zf.writestr("manifest.json", "{}")
        assert any("img:" in k for k in written) and any("dec:" in k for k in written), written
        for key in set(written):
            intruder.set(f"kind:{key}", forged_png if "img:" in key else bomb.getvalue(), ex=600)
        with pytest.raises(redis.exceptions.NoPermissionError):
            intruder.keys("*")  # the ACL does not even let it list them
        intruder.close()
        fetched = httpx.get(f"{url}/images/{PNG_ID}", headers=auth, timeout=TIMEOUT)
        assert fetched.status_code == 404 and fetched.content != forged_png
        r = httpx.get(f"{url}/decompose/{PNG_ID}/R.png", headers=auth, timeout=TIMEOUT)
        assert r.status_code == 404  # its image is gone too: nothing forged is unpacked or served
        assert httpx.post(f"{url}/images", content=PNG, headers=auth, timeout=TIMEOUT).status_code == 201
        r = httpx.get(f"{url}/decompose/{PNG_ID}/R.png", headers=auth, timeout=TIMEOUT)
        assert r.status_code == 200 and r.content == genuine_r  # recomputed, not the bomb


def record_writes(backend: object) -> list[str]:
    """The names the service writes from now on (the ACL forbids KEYS, so the test learns them here)."""
    names: list[str] = []
    put = backend.put

    async def recording_put(key: str, data: bytes, *, new: bool = False) -> bool:
        names.append(key)
        return await put(key, data, new=new)

    backend.put = recording_put  # type: ignore[attr-defined]
    return names
