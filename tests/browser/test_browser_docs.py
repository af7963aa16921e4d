"""``/docs`` (Swagger UI) and ``/redoc`` in a real browser (headless chromium), offline, under their CSP.

Every request that leaves the server is aborted (no network); each page must render the API's operations, and
the browser must report no Content-Security-Policy violation other than ReDoc's logo on ``cdn.redoc.ly``,
which the policy is meant to block.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".opblock"), ("/redoc", "[data-section-id]")])
def test_docs_render_offline_under_their_policy(browser, serve, path: str, rendered: str) -> None:  # noqa: ANN001
    server = serve()
    page = browser.new_page()
    messages: list[str] = []
    offsite: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    page.on("pageerror", lambda error: messages.append(f"page error: {error}"))

    def local_only(route) -> None:  # noqa: ANN001
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            offsite.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    response = page.goto(server.url + path)
    assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page.wait_for_selector(rendered, timeout=30_000)
    assert page.locator(rendered).count() >= 5
    violations = [m for m in messages if "Content Security Policy" in m and "cdn.redoc.ly" not in m]
    assert violations == [], violations
    assert not [m for m in messages if m.startswith("page error")], messages
    assert all("cdn.redoc.ly" in url for url in offsite), offsite
    page.close()
