"""Metadata carried from a photo to its enhanced copy (model.image), and ``kind enhance`` on phone formats.

A phone's HEIC keeps its camera, date and colour profile through ``kind enhance``; ``--strip-metadata``
drops the EXIF block (GPS included); profiles that do not describe RGB pixels are not copied.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from kind_cli import images as cli
from kind_serve.model.image import JPEG_EXIF_LIMIT, Metadata, read_metadata

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
GPS_IFD, EXIF_IFD, ORIENTATION, MAKE = 0x8825, 0x8769, 0x0112, 0x010F


@pytest.fixture(autouse=True)
def _keep_the_default_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: True)  # the CLI tunes malloc process-wide


def _exif(orientation: int = 8, maker_note: bytes = b"") -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE], exif[ORIENTATION] = "Pixelphone", orientation
    exif.get_ifd(GPS_IFD)[1] = "N"
    exif.get_ifd(GPS_IFD)[2] = (52.0, 31.0, 12.5)
    if maker_note:
        exif.get_ifd(EXIF_IFD)[0x927C] = maker_note
    return exif


def _photo(path: Path, fmt: str, size: tuple[int, int] = (48, 32), **params: object) -> Path:
    arr = np.random.default_rng(0).integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, fmt, **params)
    return path


def _reopen(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_orientation_is_reset_and_the_rest_kept(tmp_path: Path) -> None:
    path = _photo(tmp_path / "a.jpg", "JPEG", icc_profile=SRGB, exif=_exif(8).tobytes())
    with Image.open(path) as image:
        meta = read_metadata(image)
    exif = Image.Exif()
    exif.load(meta.exif)
    assert meta.icc_profile == SRGB and exif[ORIENTATION] == 1 and exif[MAKE] == "Pixelphone"
    assert exif.get_ifd(GPS_IFD)[1] == "N"
    assert meta.without_exif() == Metadata(SRGB, None)


def test_a_grey_profile_is_not_copied_onto_rgb_pixels(tmp_path: Path) -> None:
    grey = bytearray(SRGB)
    grey[16:20] = b"GRAY"  # the profile header's colour-space field
    path = _photo(tmp_path / "g.png", "PNG", icc_profile=bytes(grey))
    with Image.open(path) as image:
        assert read_metadata(image).icc_profile is None


def test_jpeg_output_drops_a_maker_note_too_big_for_one_segment(tmp_path: Path) -> None:
    path = _photo(tmp_path / "big.png", "PNG", exif=_exif(1, maker_note=b"v" * 70_000).tobytes())
    with Image.open(path) as image:
        meta = read_metadata(image)
    assert len(meta.exif) > JPEG_EXIF_LIMIT
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", **meta.save_params("jpeg"))
    exif = _reopen(buf.getvalue()).getexif()
    assert exif[MAKE] == "Pixelphone" and 0x927C not in exif.get_ifd(EXIF_IFD)
    assert len(meta.save_params("png")["exif"]) == len(meta.exif)  # PNG has room for all of it


@pytest.mark.parametrize("strip", [False, True])
def test_kind_enhance_reads_heic_and_avif_and_keeps_or_strips_exif(random_bundle: Path, tmp_path: Path, strip) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "IMG_0001.HEIC", "HEIF", icc_profile=SRGB, exif=_exif(6).tobytes())
    _photo(src / "IMG_0002.avif", "AVIF", exif=_exif(1).tobytes())
    out = tmp_path / "out"
    args = ["enhance", str(src), "--out", str(out), "--checkpoint", str(random_bundle), "--alpha", "3"]
    assert cli.main(args + (["--strip-metadata"] if strip else [])) == 0
    with Image.open(out / "IMG_0001.png") as heic, Image.open(out / "IMG_0002.png") as avif:
        assert heic.size == (32, 48) and avif.size == (48, 32)  # orientation 6 applied to the pixels
        assert heic.info.get("icc_profile") == SRGB  # the profile stays either way
        if strip:
            assert not heic.getexif() and not avif.getexif()
        else:
            assert heic.getexif()[ORIENTATION] == 1 and heic.getexif()[MAKE] == "Pixelphone"
            assert avif.getexif().get_ifd(GPS_IFD)[1] == "N"
