"""Bearer-token auth, open probes, CORS closed by default, settings validation."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.config import Settings

from .conftest import image_bytes
from .test_service_api import assert_problem

TOKEN = "s3cret-token-0123456789"


@pytest.fixture
def secured(make_settings):
    with TestClient(create_app(make_settings(auth_tokens=[TOKEN, "second-token-abcdefgh"]))) as c:
        yield c


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", TOKEN, "Bearer "])
def test_missing_or_wrong_tokens_get_401_and_no_work_is_done(secured, header) -> None:
    headers = {"authorization": header} if header else {}
    r = secured.post("/enhance?alpha=2", content=image_bytes(), headers=headers)
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert_problem(secured.post("/images", content=image_bytes(), headers=headers), 401)
    assert_problem(secured.get("/decompose?image_id=" + "a" * 64, headers=headers), 401)
    assert "kind_batch_size_count 0.0" in secured.get("/metrics").text


def test_valid_tokens_are_accepted(secured) -> None:
    for token in (TOKEN, "second-token-abcdefgh"):
        r = secured.post("/enhance?alpha=2", content=image_bytes(), headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200


def test_probes_and_metrics_stay_open(secured) -> None:
    assert secured.get("/livez").status_code == 200
    assert secured.get("/readyz").status_code == 200
    assert secured.get("/metrics").status_code == 200


def test_metrics_can_require_the_token(make_settings) -> None:
    with TestClient(create_app(make_settings(auth_tokens=[TOKEN], metrics_require_auth=True))) as c:
        assert_problem(c.get("/metrics"), 401)
        assert c.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


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


def test_settings_come_from_kind_env_vars(monkeypatch) -> None:
    monkeypatch.setenv("KIND_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("KIND_AUTH_TOKENS", f"{TOKEN},another-token-xxxxxxxx")
    monkeypatch.setenv("KIND_CORS_ORIGINS", '["https://a.example"]')
    s = Settings()
    assert s.max_batch_size == 3
    assert s.auth_tokens == [TOKEN, "another-token-xxxxxxxx"]
    assert s.cors_origins == ["https://a.example"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"auth_tokens": ["short"]},
        {"cors_origins": ["evil.example"]},
        {"cors_origins": ["*"], "auth_tokens": [TOKEN]},
        {"device": "tpu"},
        {"precision": "int4"},
        {"max_batch_size": 0},
        {"redis_url": "http://localhost"},
        {"tile_size": 128, "tile_overlap": 128},
        {"tile_size": 128, "tile_overlap": 112},  # origins rounded to 16 px would leave no overlap
        {"log_level": "LOUD"},
    ],
)
def test_unsafe_or_invalid_settings_are_refused(kwargs) -> None:
    with pytest.raises(ValidationError):
        Settings(**kwargs)
