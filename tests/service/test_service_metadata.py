"""Phone formats in, metadata kept: HEIC/AVIF uploads work everywhere, outputs carry the input's ICC and EXIF.

A photo's camera, date and colour profile must survive enhancement; ``strip_metadata=true`` removes the
EXIF block (GPS included) for sharing, and keeps the colour profile, which describes the pixels.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageCms

from .conftest import decode

W, H = 48, 32
MAKE, MODEL, TAKEN = "Pixelphone", "Dark 9", "2026:11:30 22:15:03"
GPS_IFD, EXIF_IFD, ORIENTATION = 0x8825, 0x8769, 0x0112
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo_exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[ORIENTATION] = MAKE, MODEL, orientation
    exif.get_ifd(EXIF_IFD)[0x9003] = TAKEN  # DateTimeOriginal
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 31.0, 12.5), "E", (13.0, 24.0, 18.0)
    return exif


def dark(width: int = W, height: int = H) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = (rng.random((height, width, 3)) * 60).astype(np.uint8)
    arr[: height // 4, : width // 3] += 120  # asymmetric, so a wrong rotation shows
    return Image.fromarray(arr, "RGB")


def encoded(fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    dark().save(buf, fmt, **params)
    return buf.getvalue()


def phone_photo(fmt: str = "JPEG") -> bytes:
    """A dark photo as a phone writes it: sRGB profile, camera, date, GPS and orientation 6 (turned)."""
    return encoded(fmt, icc_profile=SRGB, exif=photo_exif().tobytes())


@pytest.mark.parametrize("out", ["png", "jpeg", "webp"])
def test_output_keeps_profile_camera_date_and_gps_with_orientation_reset(client, out) -> None:
    response = client.post(f"/enhance?alpha=3&format={out}", content=phone_photo())
    assert response.status_code == 200, response.text
    image = decode(response.content)
    assert image.size == (H, W)  # turned upright by orientation 6, so the tag must now say 1
    assert image.info.get("icc_profile") == SRGB
    exif = image.getexif()
    assert (exif[0x010F], exif[0x0110], exif[ORIENTATION]) == (MAKE, MODEL, 1)
    assert exif.get_ifd(EXIF_IFD)[0x9003] == TAKEN
    assert exif.get_ifd(GPS_IFD)[1] == "N"


def test_strip_metadata_removes_exif_and_gps_but_keeps_the_profile(client) -> None:
    response = client.post("/enhance?alpha=3&format=jpeg&strip_metadata=true", content=phone_photo())
    assert response.status_code == 200, response.text
    image = decode(response.content)
    assert image.size == (H, W)
    assert not image.getexif() and b"Pixelphone" not in response.content
    assert image.info.get("icc_profile") == SRGB
    kept = client.post("/enhance?alpha=3&format=jpeg", content=phone_photo())
    assert kept.headers["etag"] != response.headers["etag"]  # a cache must not mix the two


def test_input_without_metadata_gives_output_without_metadata(client) -> None:
    image = decode(client.post("/enhance?alpha=3", content=encoded("PNG")).content)
    assert not image.getexif() and "icc_profile" not in image.info


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_formats_enhance_store_and_decompose(client, fmt) -> None:
    data = phone_photo(fmt)
    response = client.post("/enhance?alpha=auto&format=jpeg", content=data, headers={"content-type": "image/heic"})
    assert response.status_code == 200, response.text
    image = decode(response.content)
    assert image.size == (H, W)
    assert image.getexif()[0x010F] == MAKE and image.getexif()[ORIENTATION] == 1

    stored = client.post("/images", content=data)
    assert stored.status_code == 201, stored.text
    assert stored.json()["format"] == fmt.lower()
    image_id = stored.json()["id"]
    again = client.post(f"/enhance?image_id={image_id}&alpha=auto&format=png")
    assert again.status_code == 200 and decode(again.content).size == (H, W)

    links = client.get(f"/decompose?image_id={image_id}&alpha=auto")
    assert links.status_code == 200, links.text
    reflectance = decode(client.get(links.json()["components"]["R"]).content)
    assert reflectance.size == (H, W)
    archive = client.post("/decompose", content=data)
    assert archive.status_code == 200, archive.text
    assert {"R.png", "L.png", "manifest.json"} <= set(zipfile.ZipFile(io.BytesIO(archive.content)).namelist())


def test_a_real_cameras_exif_survives(client, shared_dir) -> None:
    """DICM 14, shot on a Konica Minolta DiMAGE G600 in 2006: camera, date and exposure come through."""
    with Image.open(shared_dir / "datasets" / "real-lowlight" / "DICM" / "14.jpg") as image:
        buf = io.BytesIO()
        image.reduce(4).save(buf, "JPEG", quality=90, exif=image.info["exif"])  # small: tiles of 64 are slow
    response = client.post("/enhance?alpha=auto&format=jpeg", content=buf.getvalue())
    assert response.status_code == 200, response.text
    exif = decode(response.content).getexif()
    assert exif[0x0110] == "DiMAGE G600" and exif.get_ifd(EXIF_IFD)[0x9003] == "2006:01:05 13:41:18"
    assert exif.get_ifd(EXIF_IFD)[0x829D] == 2.8  # f-number
