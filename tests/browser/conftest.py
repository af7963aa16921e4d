"""Fixtures for the browser tests: Debian's chromium driven by Playwright, and the service on loopback.

Nothing is downloaded at run time: Playwright (PyPI) starts the system browser through ``executable_path``.
``scripts/test.sh`` installs chromium when it runs as root; elsewhere these tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from kind_serve.model import InferenceDefaults
from tests.bundles import random_kind_bundle
from tests.servers import ThreadServer

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO.parent / "shared" / "datasets" / "real-lowlight"


def chromium_path() -> str | None:
    found = os.environ.get("KIND_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and Path(found).exists() else None


# module scope: while Playwright's sync API is open the main thread has a running event loop, and every later
# test that calls asyncio.run() would fail
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed: scripts/test.sh installs it as root (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_kind_bundle(tmp_path_factory, "browser-random", InferenceDefaults(tile_size=256, tile_overlap=32))


@pytest.fixture
def serve(demo_bundle: Path):
    """Start the service with extra settings; stopped at the end of the test."""
    from kind_serve.service.config import Settings

    servers: list[ThreadServer] = []

    def start(**overrides: object) -> ThreadServer:
        base = {"checkpoint": demo_bundle, "device": "cpu", "json_logs": False, "warmup": False}
        server = ThreadServer(Settings(**{**base, **overrides})).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def dark_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real night photo (DICM 08), halved to 320×240 so that four enhancements stay quick on one core."""
    photo = PHOTOS / "DICM" / "08.jpg"
    if not photo.is_file():
        pytest.skip(f"the real low-light photos are not at {PHOTOS} (../shared/datasets)")
    small = tmp_path_factory.mktemp("photo") / photo.name
    with Image.open(photo) as image:
        exif = image.info.get("exif", b"")
        image.reduce(2).save(small, "JPEG", quality=92, exif=exif)
    return small


def result_shown(page, previous_alpha: str | None = None, timeout_ms: int = 90_000) -> str:  # noqa: ANN001
    """Wait until the page shows a result (given ``previous_alpha``, one computed with another α); its α."""
    page.wait_for_function(
        """(prev) => {
          const after = document.getElementById("after");
          return !document.body.hasAttribute("aria-busy") && after.naturalWidth > 0
            && after.dataset.alpha !== undefined && after.dataset.alpha !== prev;
        }""",
        arg=previous_alpha,
        timeout=timeout_ms,
    )
    return page.get_attribute("#after", "data-alpha")
