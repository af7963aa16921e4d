"""The worker runs the precision ``precision`` resolves to; an emulated one is flagged in the log and /readyz."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from kind_serve.model import precision
from kind_serve.service.app import create_app


@pytest.fixture
def avx2_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "_cpu_probe", lambda name: False)


def test_forced_bf16_on_a_cpu_without_it_warns_in_log_and_readyz(
    make_settings, avx2_only, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), TestClient(create_app(make_settings(precision="bf16"))) as c:
        ready = c.get("/readyz")
        metrics = c.get("/metrics").text
    assert ready.status_code == 200
    assert "bf16" in ready.json()["detail"] and "emulated" in ready.json()["detail"]
    assert any("bf16" in r.getMessage() and "slower than fp32" in r.getMessage() for r in caplog.records)
    assert 'precision="bf16"' in metrics


def test_auto_runs_fp32_on_such_a_cpu_without_warning(make_settings, avx2_only) -> None:
    with TestClient(create_app(make_settings(precision="auto"))) as c:
        ready = c.get("/readyz").json()
        metrics = c.get("/metrics").text
    assert ready == {"status": "ok", "detail": None}
    assert 'precision="fp32"' in metrics


def test_auto_takes_bf16_where_the_cpu_has_it(make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "_cpu_probe", lambda name: name == "_is_avx512_bf16_supported")
    with TestClient(create_app(make_settings(precision="auto"))) as c:
        assert c.get("/readyz").json()["detail"] is None
        assert 'precision="bf16"' in c.get("/metrics").text


def test_unknown_precision_is_a_settings_error(make_settings) -> None:
    with pytest.raises(ValueError, match="auto, fp32, fp16, bf16"):
        make_settings(precision="int8")
