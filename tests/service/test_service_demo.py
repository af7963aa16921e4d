"""The demo page as served: self-contained (no other origin), locked down by CSP, public but the
API behind it keeps its auth. Its behaviour in a browser is tested in tests/browser."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from kind_serve.service.app import create_app
from kind_serve.service.routes.pages import STATIC

TOKEN = "demo-test-token-0123456789"


def test_page_and_assets_are_served_with_a_same_origin_policy(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "http" not in csp
    assert 'src="/demo/demo.js"' in page.text and 'href="/demo/demo.css"' in page.text
    js = client.get("/demo/demo.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "/enhance?" in js.text and "image_id" in js.text
    assert client.get("/demo/demo.css").headers["content-type"].startswith("text/css")
    assert client.get("/demo/secrets.txt").status_code == 404
    assert client.get("/demo/..%2fconfig.py").status_code == 404
    assert "/" not in client.get("/openapi.json").json()["paths"]  # not part of the API


def test_nothing_is_loaded_from_another_origin() -> None:
    """No CDN: no absolute URL in what the page loads (links in prose are not loaded)."""
    for name in ("index.html", "demo.js", "demo.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name
        assert "@import" not in text and "url(http" not in text, name


def test_with_auth_the_page_loads_but_the_api_behind_it_needs_the_token(make_settings) -> None:
    with TestClient(create_app(make_settings(auth_tokens=[TOKEN]))) as c:
        assert c.get("/").status_code == 200  # static page, no data: it asks for the token itself
        assert c.post("/images", content=b"x").status_code == 401
        assert "Authorization" in (STATIC / "demo.js").read_text()
