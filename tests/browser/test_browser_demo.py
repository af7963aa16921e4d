"""The demo page in a real browser (headless chromium): what a visitor does and sees.

A real dark photo goes in once; moving the light-level slider brings a different picture of the same size
without uploading again; the decomposition shows three components; a text file shows the server's
problem-details message; with auth on, the page asks for the token and then works; on a phone-sized screen
nothing overflows sideways.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from .conftest import result_shown

pytestmark = pytest.mark.timeout(180)

TOKEN = "browser-test-token-0123456789"
# a fingerprint of what the <img> shows: its pixels drawn on a canvas, summed per channel
PIXELS = """(id) => {
  const img = document.getElementById(id);
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 4) sum += data[i] + data[i + 1] + data[i + 2];
  return { width: img.naturalWidth, height: img.naturalHeight, mean: sum / (data.length / 4) / 3 };
}"""


def _open(browser, server, **context: object):
    page = browser.new_context(**context).new_page()
    requests: list = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(server.url + "/")
    return page, requests, errors


def test_photo_slider_split_and_decomposition(browser, serve, dark_photo: Path, tmp_path: Path) -> None:
    server = serve()
    page, requests, errors = _open(browser, server, viewport={"width": 1200, "height": 900})
    width, height = Image.open(dark_photo).size

    page.set_input_files("#file", str(dark_photo))
    assert page.is_visible("#progress")  # shown while the upload and the enhancement run
    result_shown(page)
    first = page.evaluate(PIXELS, "after")
    original = page.evaluate(PIXELS, "before")
    assert (first["width"], first["height"]) == (width, height)
    assert first["mean"] > original["mean"] + 5  # the dark photo came out brighter
    auto_alpha = page.get_attribute("#after", "data-alpha")
    assert page.inner_text("#alpha-value") == f"α {float(auto_alpha):.2f} (auto)"
    assert not page.is_visible("#progress")

    box = page.locator("#alpha").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.97, box["y"] + box["height"] / 2)  # far right: brightest
    result_shown(page, previous_alpha=auto_alpha)
    second = page.evaluate(PIXELS, "after")
    assert (second["width"], second["height"]) == (width, height)
    assert second["mean"] != pytest.approx(first["mean"], abs=0.5)
    assert not page.is_checked("#auto") and "(auto)" not in page.inner_text("#alpha-value")

    uploads = [r for r in requests if r.method == "POST" and urlparse(r.url).path == "/images"]
    enhances = [r for r in requests if urlparse(r.url).path == "/enhance"]
    assert len(uploads) == 1 and len(enhances) >= 2
    for request in enhances:  # the photo is referred to, never sent again
        assert parse_qs(urlparse(request.url).query)["image_id"] == [
            hashlib.sha256(dark_photo.read_bytes()).hexdigest()
        ]
        assert not request.post_data_buffer

    compare = page.locator("#compare").bounding_box()
    y = compare["y"] + compare["height"] / 2
    page.mouse.move(compare["x"] + compare["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(compare["x"] + compare["width"] * 0.2, y, steps=5)
    page.mouse.up()
    assert int(page.get_attribute("#handle", "aria-valuenow")) == pytest.approx(20, abs=2)

    page.click("#decompose")
    page.wait_for_function("() => document.querySelectorAll('#components img').length === 3", timeout=90_000)
    page.wait_for_function("() => [...document.querySelectorAll('#components img')].every((i) => i.naturalWidth > 0)")
    sizes = page.eval_on_selector_all(
        "#components img", "(imgs) => imgs.map((i) => [i.dataset.component, i.naturalWidth, i.naturalHeight])"
    )
    assert sizes == [["R", width, height], ["L", width, height], ["L_adj", width, height]]

    with page.expect_download() as download:
        page.select_option("#format", "webp")
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "08-kind.webp" and Image.open(saved).size == (width, height)

    assert [r.url for r in requests if not r.url.startswith((server.url, "blob:"))] == []  # nothing from elsewhere
    assert not errors


def test_a_text_file_shows_the_problem_detail(browser, serve, tmp_path: Path) -> None:
    server = serve()
    page, _, errors = _open(browser, server)
    note = tmp_path / "notes.txt"
    note.write_text("this is not a photo\n" * 20)
    page.set_input_files("#file", str(note))
    page.wait_for_selector("#error", state="visible", timeout=30_000)
    message = page.inner_text("#error")
    assert message.startswith("Unsupported image type") and "not an image in a supported format" in message
    assert not errors


def test_with_auth_the_page_asks_for_the_token_then_works(browser, serve, dark_photo: Path) -> None:
    server = serve(auth_tokens=[TOKEN])
    page, _, _ = _open(browser, server)
    page.set_input_files("#file", str(dark_photo))
    page.wait_for_selector("#token-form", state="visible", timeout=30_000)
    assert "Unauthorized" in page.inner_text("#error")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    result_shown(page)
    assert page.is_hidden("#error")
    assert page.evaluate(PIXELS, "after")["width"] == Image.open(dark_photo).width


def test_too_large_photo_shows_the_limit_on_a_phone_screen(browser, serve, dark_photo: Path) -> None:
    server = serve(max_megapixels=0.05)  # the photo is 0.077 megapixels
    page, _, _ = _open(browser, server, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.set_input_files("#file", str(dark_photo))
    page.wait_for_selector("#error", state="visible", timeout=30_000)
    assert "megapixels" in page.inner_text("#error")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing wider than the phone


def test_a_heic_photo_is_enhanced_even_where_the_browser_cannot_show_it(browser, serve, dark_photo, tmp_path) -> None:
    """Chromium cannot display HEIC: the page says so and shows the server's result, upright and full size."""
    heic = tmp_path / "IMG_0001.HEIC"
    with Image.open(dark_photo) as image:
        exif = Image.Exif()
        exif[0x0112] = 6  # held sideways: the result must come out turned
        image.save(heic, "HEIF", exif=exif.tobytes())
        width, height = image.size
    server = serve()
    page, _, errors = _open(browser, server)
    page.set_input_files("#file", str(heic))
    result_shown(page)
    shown = page.evaluate(PIXELS, "after")
    assert (shown["width"], shown["height"]) == (height, width)
    assert page.is_visible("#note") and "cannot display" in page.inner_text("#note")
    assert not errors


def test_a_second_photo_chosen_mid_request_wins(browser, serve, dark_photo, tmp_path) -> None:
    """Choosing another photo cancels the first one's upload or enhancement: the second photo's result stays."""
    second = tmp_path / "second.jpg"
    with Image.open(dark_photo) as image:
        image.crop((0, 0, 200, 150)).save(second, "JPEG", quality=92)
    server = serve()
    page, _, errors = _open(browser, server)
    page.set_input_files("#file", str(dark_photo))
    page.set_input_files("#file", str(second))
    result_shown(page)
    page.wait_for_timeout(1500)  # a late answer for the first photo would land in this time
    shown = page.evaluate(PIXELS, "after")
    assert (shown["width"], shown["height"]) == (200, 150)
    assert page.is_hidden("#error") and not errors
