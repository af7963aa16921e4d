"""Auth that cannot fail open, secrets that are never printed, and a store that trusts only what it signed.

Bearer tokens (compared as digests, no early exit), open probes, docs and metrics behind the API's auth, CORS
closed by default, settings validation (and its redaction), per-token store scopes, signed store entries,
response headers, request ids and plain-text log escaping.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import zipfile

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from kind_serve.service import auth, logs
from kind_serve.service.app import create_app
from kind_serve.service.config import Settings, explain, is_loopback
from kind_serve.service.store import MemoryStore, SignedStore

from .conftest import free_port, image_bytes
from .test_service_api import assert_problem

TOKEN = "s3cret-token-0123456789"
OTHER = "second-token-abcdefgh"
AUTH = {"authorization": f"Bearer {TOKEN}"}
AUTH_OTHER = {"authorization": f"Bearer {OTHER}"}
LONG_SECRET = "this-long-token-must-never-be-printed-0123456789"
STORE_KEY = "k" * 40


@pytest.fixture
def secured(make_settings):
    with TestClient(create_app(make_settings(auth_tokens=[TOKEN, OTHER]))) as c:
        yield c


def computed(client: TestClient) -> float:
    text = client.get("/metrics", headers=AUTH).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("kind_batch_size_count"))


# ---------------------------------------------------------------- bearer tokens


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", TOKEN, "Bearer "])
def test_missing_or_wrong_tokens_get_401_and_no_work_is_done(secured, header) -> None:
    headers = {"authorization": header} if header else {}
    r = secured.post("/enhance?alpha=2", content=image_bytes(), headers=headers)
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert_problem(secured.post("/images", content=image_bytes(), headers=headers), 401)
    assert_problem(secured.get("/decompose?image_id=" + "a" * 64, headers=headers), 401)
    assert computed(secured) == 0


def test_valid_tokens_are_accepted(secured) -> None:
    for headers in (AUTH, AUTH_OTHER):
        assert secured.post("/enhance?alpha=2", content=image_bytes(), headers=headers).status_code == 200
    assert computed(secured) > 0


def test_token_check_compares_every_digest_without_early_exit(monkeypatch) -> None:
    tokens = auth.Tokens([TOKEN, OTHER, "third-token-0123456789"], b"k" * 32)
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    for presented in (TOKEN, "x", "wrong-but-long-" * 20):
        compared.clear()
        tokens.match(presented)
        # the first token matching still compares the other two; every comparison is 32 bytes against 32 bytes,
        # so neither the position of the match nor the lengths of the tokens show in the time taken
        assert compared == [(32, 32)] * 3
    assert tokens.match(TOKEN) != tokens.match(OTHER)
    assert tokens.match(TOKEN[:-1]) is None and tokens.match(TOKEN + "x") is None


def test_probes_stay_open_and_metrics_follow_the_api_auth(secured, make_settings) -> None:
    assert secured.get("/livez").status_code == 200
    assert secured.get("/readyz").status_code == 200
    assert_problem(secured.get("/metrics"), 401)
    assert secured.get("/metrics", headers=AUTH).status_code == 200


def test_metrics_address_serves_metrics_and_the_api_port_does_not(make_settings) -> None:
    port = free_port()
    with TestClient(create_app(make_settings(auth_tokens=[TOKEN], metrics_address=f"127.0.0.1:{port}"))) as c:
        assert c.post("/enhance?alpha=2", content=image_bytes(), headers=AUTH).status_code == 200
        assert_problem(c.get("/metrics", headers=AUTH), 404)
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert scraped.status_code == 200 and "kind_batch_size_count" in scraped.text
    with pytest.raises(httpx.ConnectError):  # the listener stops with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_docs_follow_the_api_auth(secured, client, path) -> None:
    assert_problem(secured.get(path), 401)
    assert secured.get(path, headers=AUTH).status_code == 200
    assert client.get(path).status_code == 200  # no auth configured: open, as the API is
    if path == "/openapi.json":
        assert "/enhance" in secured.get(path, headers=AUTH).json()["paths"]


def test_cors_is_closed_by_default_and_opens_for_listed_origins(client, make_settings) -> None:
    preflight = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    r = client.options("/enhance", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/enhance?alpha=2", content=image_bytes(), headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    with TestClient(create_app(make_settings(cors_origins=["https://app.example"]))) as c:
        ok = c.options("/enhance", headers={**preflight, "origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-origin" not in c.options("/enhance", headers=preflight).headers


# ---------------------------------------------------------------- settings


def test_settings_come_from_kind_env_vars(monkeypatch) -> None:
    monkeypatch.setenv("KIND_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("KIND_AUTH_TOKENS", f"{TOKEN},another-token-xxxxxxxx")
    monkeypatch.setenv("KIND_CORS_ORIGINS", '["https://a.example"]')
    s = Settings()
    assert s.max_batch_size == 3
    assert s.auth_tokens == [TOKEN, "another-token-xxxxxxxx"]
    assert s.cors_origins == ["https://a.example"]


def test_secret_settings_come_from_files(monkeypatch, tmp_path) -> None:
    (tmp_path / "tokens").write_text(f"{TOKEN}\n{OTHER}\n")
    (tmp_path / "password").write_text("redis pass word\n")
    (tmp_path / "key").write_text(STORE_KEY + "\n")
    monkeypatch.setenv("KIND_AUTH_TOKENS_FILE", str(tmp_path / "tokens"))
    monkeypatch.setenv("KIND_REDIS_PASSWORD_FILE", str(tmp_path / "password"))
    monkeypatch.setenv("KIND_STORE_KEY_FILE", str(tmp_path / "key"))
    s = Settings(host="0.0.0.0", redis_url="redis://kind@redis:6379/0")
    assert s.auth_tokens == [TOKEN, OTHER]
    assert s.redis_password.get_secret_value() == "redis pass word"  # spaces kept, the final newline dropped
    assert s.store_key.get_secret_value() == STORE_KEY
    monkeypatch.setenv("KIND_AUTH_TOKENS", OTHER)  # the environment wins over the file
    assert Settings().auth_tokens == [OTHER]


def test_an_unreadable_secret_file_is_an_error_not_an_empty_value(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("KIND_AUTH_TOKENS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="KIND_AUTH_TOKENS_FILE: cannot read the file") as info:
        Settings()
    assert str(tmp_path) not in explain(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"auth_tokens": ["short"]},
        {"cors_origins": ["evil.example"]},
        {"cors_origins": ["*"], "auth_tokens": [TOKEN]},
        {"device": "tpu"},
        {"precision": "int4"},
        {"max_batch_size": 0},
        {"redis_url": "http://localhost", "store_key": STORE_KEY},
        {"redis_url": "redis://localhost:6379/0"},  # no store key to sign entries with
        {"redis_url": "redis://localhost:6379/0", "store_key": "too-short"},
        {"metrics_address": "9100"},  # no host
        {"metrics_address": "0.0.0.0:http"},
        {"log_level": "LOUD"},
        {"host": "0.0.0.0"},  # no tokens beyond loopback
        {"host": "::"},
        {"host": "192.0.2.7"},
        {"host": "example.org"},
    ],
)
def test_unsafe_or_invalid_settings_are_refused(kwargs) -> None:
    with pytest.raises(ValidationError):
        Settings(**kwargs)


def test_network_access_needs_tokens_or_an_explicit_anonymous_setting() -> None:
    assert Settings(host="0.0.0.0", auth_tokens=[TOKEN]).auth_enabled
    anonymous = Settings(host="0.0.0.0", allow_anonymous_network_access=True)
    assert not anonymous.auth_enabled
    with pytest.raises(ValidationError) as info:
        Settings(host="0.0.0.0")
    assert "KIND_ALLOW_ANONYMOUS_NETWORK_ACCESS" in explain(info.value)
    # a newcomer on loopback needs nothing
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and not Settings(host=host).auth_enabled


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"KIND_AUTH_TOKENS": f"{LONG_SECRET},short"}, "KIND_AUTH_TOKENS"),
        ({"KIND_AUTH_TOKENS": f'["{LONG_SECRET}", "with space {LONG_SECRET}"]'}, "KIND_AUTH_TOKENS"),
        ({"KIND_STORE_KEY": LONG_SECRET[:20]}, "KIND_STORE_KEY"),
        ({"KIND_REDIS_URL": f"http://user:{LONG_SECRET}@redis"}, "KIND_REDIS_URL"),
        ({"KIND_CORS_ORIGINS": f"ftp://{LONG_SECRET}"}, "KIND_CORS_ORIGINS"),
        ({"KIND_MAX_BATCH_SIZE": LONG_SECRET}, "KIND_MAX_BATCH_SIZE"),
    ],
)
def test_settings_errors_name_the_setting_never_the_value(monkeypatch, env, setting) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    secret = LONG_SECRET[:20]
    for text in (str(info.value), repr(info.value), explain(info.value)):
        assert secret not in text, text
    assert all(secret not in str(e) for e in info.value.errors(include_input=False))
    assert explain(info.value).startswith(f"{setting.removeprefix('KIND_').lower()} ({setting}): ")


def test_settings_repr_holds_no_secret() -> None:
    s = Settings(
        auth_tokens=[LONG_SECRET],
        redis_url=f"redis://kind:{LONG_SECRET}@redis:6379/0",
        redis_password=LONG_SECRET,
        store_key=LONG_SECRET,
    )
    assert LONG_SECRET not in repr(s) and LONG_SECRET not in str(s)


# ---------------------------------------------------------------- the store


def test_stored_images_are_scoped_per_token(secured) -> None:
    data = image_bytes(seed=3)
    image_id = hashlib.sha256(data).hexdigest()
    assert secured.post("/images", content=data, headers=AUTH).status_code == 201
    assert secured.get(f"/images/{image_id}", headers=AUTH).content == data
    # the other client cannot fetch, enhance or decompose it, nor tell that it exists
    assert_problem(secured.get(f"/images/{image_id}", headers=AUTH_OTHER), 404)
    assert_problem(secured.post(f"/enhance?image_id={image_id}&alpha=2", headers=AUTH_OTHER), 404)
    assert secured.get(f"/decompose?image_id={image_id}", headers=AUTH).status_code == 200
    assert_problem(secured.get(f"/decompose?image_id={image_id}", headers=AUTH_OTHER), 404)
    assert_problem(secured.get(f"/decompose/{image_id}/R.png", headers=AUTH_OTHER), 404)


def test_without_auth_the_store_is_shared(client) -> None:
    data = image_bytes(seed=4)
    image_id = client.post("/images", content=data).json()["id"]
    assert client.get(f"/images/{image_id}").content == data


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_signed_store_reads_back_only_what_it_signed() -> None:
    backend = MemoryStore(1 << 20, 60)
    store = SignedStore(backend, b"k" * 32)
    data = image_bytes(seed=5)
    key = "img:" + hashlib.sha256(data).hexdigest()
    run(store.put(key, data))
    run(store.put("dec:result", b"derived bytes"))
    assert run(store.get(key)) == data and run(store.get("dec:result")) == b"derived bytes"
    raw = run(backend.get("dec:result"))
    # a flipped byte, a value moved under another name, unsigned bytes, another key's signature: all missing
    run(backend.put("dec:result", raw[:-1] + bytes([raw[-1] ^ 1])))
    assert run(store.get("dec:result")) is None
    run(backend.put("dec:other", raw))
    assert run(store.get("dec:other")) is None
    run(backend.put("dec:plain", b"x" * 100))
    assert run(store.get("dec:plain")) is None
    run(SignedStore(backend, b"j" * 32).put("dec:foreign", b"derived bytes"))
    assert run(store.get("dec:foreign")) is None
    # scopes see only their own names
    run(store.scoped("alice").put("dec:result", b"alice's"))
    assert run(store.scoped("bob").get("dec:result")) is None
    assert run(store.scoped("alice").get("dec:result")) == b"alice's"


def test_an_image_entry_must_hash_to_its_id_even_when_signed() -> None:
    store = SignedStore(MemoryStore(1 << 20, 60), b"k" * 32)
    real, forged = image_bytes(seed=6), image_bytes(seed=7)
    key = "img:" + hashlib.sha256(real).hexdigest()
    run(store.put(key, forged))  # as if the signing key had leaked
    assert run(store.get(key)) is None


def test_a_tampered_store_cannot_make_the_service_serve_forged_data(client, caplog) -> None:
    data = image_bytes(seed=8)
    image_id = client.post("/images", content=data).json()["id"]
    assert client.get(f"/decompose?image_id={image_id}").status_code == 200
    backend: MemoryStore = client.app.state.store.inner
    names = list(backend._items)
    forged_png = image_bytes(seed=9)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("R.png", b"\0" * 50_000_000)
        zf.writestr("manifest.json", "{}")
    with caplog.at_level(logging.WARNING, logger="kind_serve.service.store"):
        for name in names:
            value = forged_png if name.startswith("img:") else bomb.getvalue()
            run(backend.put(name, value))
        assert_problem(client.get(f"/images/{image_id}"), 404)
        r = client.get(f"/decompose/{image_id}/R.png")
    assert r.status_code == 404 or r.content != b"\0" * 50_000_000
    assert "failed verification" in caplog.text


# ---------------------------------------------------------------- store hygiene and HTTP details


def test_an_image_is_decoded_in_full_before_it_is_stored(client) -> None:
    good = image_bytes(width=64, height=64)
    broken = good[:60] + bytes(len(good) - 60)  # a valid header over garbage pixel data
    r = client.post("/images", content=broken)
    assert r.status_code in (413, 415, 422), r.text
    assert_problem(client.get(f"/images/{hashlib.sha256(broken).hexdigest()}"), 404)


def test_responses_carry_nosniff_and_images_a_content_disposition(client) -> None:
    data = image_bytes()
    stored = client.post("/images", content=data)
    image_id = stored.json()["id"]
    fetched = client.get(f"/images/{image_id}")
    assert fetched.headers["content-disposition"] == f'attachment; filename="{image_id[:12]}.png"'
    enhanced = client.post("/enhance?alpha=2&format=jpeg", content=data)
    assert enhanced.headers["content-disposition"] == 'inline; filename="enhanced.jpeg"'
    component = client.get(f"/decompose/{image_id}/L.png")
    assert component.headers["content-disposition"].startswith("inline; filename=")
    for r in (stored, fetched, enhanced, component, client.get("/livez"), client.get("/nowhere")):
        assert r.headers["x-content-type-options"] == "nosniff"


def test_if_none_match_star_on_post_is_412_without_work(client) -> None:
    r = client.post("/enhance?alpha=2", content=image_bytes(), headers={"if-none-match": "*"})
    assert_problem(r, 412)
    assert "kind_batch_size_count 0.0" in client.get("/metrics").text
    first = client.post("/enhance?alpha=2", content=image_bytes())
    again = client.post("/enhance?alpha=2", content=image_bytes(), headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304  # a real ETag still answers 304


@pytest.mark.parametrize("rid", ["abc\n", "abc\ndef", "\nabc", "a" * 129, "abc def", "abc$"])
def test_request_id_pattern_must_match_in_full(rid) -> None:
    assert logs._SAFE_ID.fullmatch(rid) is None
    assert logs._SAFE_ID.fullmatch("req-1.2:3_x") is not None


def test_request_ids_from_clients_are_kept_only_when_well_formed(client) -> None:
    assert client.get("/livez", headers={"x-request-id": "req-42"}).headers["x-request-id"] == "req-42"
    replaced = client.get("/livez", headers={"x-request-id": "bad id!"}).headers["x-request-id"]
    assert replaced != "bad id!" and len(replaced) == 32


def test_plain_text_logs_escape_control_characters() -> None:
    formatter = logs.PlainFormatter()
    record = logging.LogRecord("kind_serve.service.access", logging.INFO, __file__, 1, "%s %s %d", None, None)
    record.args = ("GET", "/x\n2026-01-01 00:00:00,000 INFO service: forged\r\x1b[2K", 404)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "/x\\n2026-01-01" in line and "\\r\\x1b[2K" in line
    try:
        raise ValueError("bad\nINFO forged")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    text = formatter.format(record)
    assert all(line.startswith("  | ") for line in text.splitlines()[1:])  # no traceback line at column 0
