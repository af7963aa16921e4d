"""What a new user meets first: offline API docs, the shipped bundle found from any directory, clean logs."""

from __future__ import annotations

import io
import logging
import re
import stat
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kind_serve.service import logs
from kind_serve.service.app import create_app
from kind_serve.service.config import SHIPPED_CHECKPOINT, Settings

from .conftest import image_bytes


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_server_itself(client: TestClient, page: str) -> None:
    html = client.get(page)
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*["']([^"']+)["']""", html.text)
    urls = [a or b for a, b in urls]
    assert urls, html.text
    external = [u for u in urls if u.startswith(("http://", "https://", "//"))]
    assert not external, f"{page} loads {external} from the internet"
    assert "fonts.googleapis" not in html.text
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url


def test_default_checkpoint_is_the_shipped_bundle_whatever_the_cwd(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KIND_CHECKPOINT", raising=False)
    path = Settings().checkpoint
    assert path == SHIPPED_CHECKPOINT and path.is_absolute()
    assert (path / "manifest.json").is_file()


def test_zip_members_extract_as_0644(client: TestClient) -> None:
    resp = client.post("/decompose?alpha=2", content=image_bytes(50, 20))
    assert resp.status_code == 200
    zf = zipfile.ZipFile(io.BytesIO(resp.content))
    for info in zf.infolist():
        assert stat.S_IMODE(info.external_attr >> 16) == 0o644, info.filename
        assert stat.S_ISREG(info.external_attr >> 16), info.filename


def test_adjusted_illumination_without_alpha_says_how_to_ask(client: TestClient) -> None:
    image_id = client.post("/images", content=image_bytes()).json()["id"]
    resp = client.get(f"/decompose/{image_id}/L_adj.png")
    assert resp.status_code == 422
    assert "alpha=auto" in resp.json()["detail"]
    route = client.get("/openapi.json").json()["paths"]["/decompose/{image_id}/{component}.png"]["get"]
    assert "422" in route["description"] and "alpha" in route["description"]


def test_service_logs_follow_a_replaced_stderr(monkeypatch, capsys) -> None:
    """A handler bound to an old (closed) stderr prints 'Logging error' tracebacks; ours follows sys.stderr."""
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in ("kind_serve.service", "kind_serve.model", "uvicorn", "uvicorn.error")
    }
    try:
        old = io.StringIO()
        monkeypatch.setattr(sys, "stderr", old)
        logs.configure("INFO", json_lines=False)
        old.close()
        fresh = io.StringIO()
        monkeypatch.setattr(sys, "stderr", fresh)
        logging.getLogger("kind_serve.service.test").info("still logging")
        assert "still logging" in fresh.getvalue()
    finally:
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate


def test_app_starts_from_another_directory_with_defaults(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(device="cpu", warmup=False, json_logs=False)
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").status_code == 200
