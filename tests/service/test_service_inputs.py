"""Hostile and odd images: each gets its documented 4xx or a correct image, never a 500, and the server stays ready."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, features

from .conftest import decode, image_bytes
from .test_service_api import assert_problem


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares ``width``×``height`` (a decompression bomb)."""
    data = bytearray(image_bytes(1, 1))
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def _save(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _frames(fmt: str) -> bytes:
    frames = [Image.new("RGB", (24, 16), (i * 40, 10, 10)) for i in range(3)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


REJECTED = {
    "empty body": (b"", 422),
    "plain text": (b"hello, this is not an image", 415),
    "html": (b"<!doctype html><html><body>hi</body></html>", 415),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', 415),
    "truncated png": (image_bytes(64, 64)[: len(image_bytes(64, 64)) // 2], 422),
    "truncated jpeg": (image_bytes(64, 64, fmt="JPEG")[:300], 422),
    "bomb: tiny file, huge declared size": (_png_declaring(100_000, 100_000), 413),
    "beyond the megapixel limit": (_png_declaring(8000, 7000), 413),
    "zero-size declared": (_png_declaring(0, 10), 422),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_bad_inputs_get_their_documented_status(client, name) -> None:
    data, status = REJECTED[name]
    body = assert_problem(client.post("/enhance?alpha=2", content=data), status)
    assert body["type"].startswith("https://")
    assert client.get("/readyz").status_code == 200


def _grey16() -> bytes:
    arr = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)
    return _save(Image.fromarray(arr), "PNG")


ACCEPTED = {
    "1x1": (image_bytes(1, 1), (1, 1)),
    "16-bit grey png": (_grey16(), (40, 30)),
    "grey": (image_bytes(mode="L"), (40, 30)),
    "grey+alpha": (image_bytes(mode="LA"), (40, 30)),
    "palette": (image_bytes(mode="P"), (40, 30)),
    "rgba": (image_bytes(mode="RGBA"), (40, 30)),
    "cmyk jpeg": (image_bytes(mode="CMYK", fmt="JPEG"), (40, 30)),
    "bmp": (image_bytes(fmt="BMP"), (40, 30)),
    "tiff": (image_bytes(fmt="TIFF"), (40, 30)),
    "float tiff": (_save(Image.fromarray(np.full((30, 40), 0.2, np.float32)), "TIFF"), (40, 30)),
    "animated gif (first frame)": (_frames("GIF"), (24, 16)),
    "webp": (image_bytes(fmt="WEBP"), (40, 30)),
}
if features.check("webp"):
    ACCEPTED["animated webp (first frame)"] = (_frames("WEBP"), (24, 16))


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_odd_but_valid_images_are_enhanced(client, name) -> None:
    data, size = ACCEPTED[name]
    r = client.post("/enhance?alpha=2", content=data)
    assert r.status_code == 200, r.text
    out = decode(r.content)
    assert out.size == size and out.mode == "RGB"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_exif_orientations(client, orientation) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    r = client.post("/enhance?alpha=2", content=image_bytes(40, 24, fmt="JPEG", exif=exif.tobytes()))
    assert r.status_code == 200
    assert decode(r.content).size == ((24, 40) if orientation >= 5 else (40, 24))


def test_extension_and_content_type_are_ignored_in_favour_of_the_data(client) -> None:
    png = image_bytes()
    r = client.post("/enhance?alpha=2", files={"file": ("photo.jpg", png, "image/jpeg")})
    assert r.status_code == 200
    r = client.post("/enhance?alpha=2", content=png, headers={"content-type": "text/plain"})
    assert r.status_code == 200


def test_multipart_without_a_file_field(client) -> None:
    assert_problem(client.post("/enhance", files={"image": ("a.png", image_bytes(), "image/png")}), 422)
    assert_problem(client.post("/enhance", files={"file": (None, "not a file")}), 422)
    bad = b"--xyz\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\nabc"  # no closing boundary
    r = client.post("/enhance", content=bad, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code in (415, 422) and r.headers["content-type"] == "application/problem+json"
