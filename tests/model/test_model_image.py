"""Input image policy: any PIL mode becomes upright 8-bit RGB of the right size."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from kind_serve.model.image import from_tensor, to_rgb, to_tensor


def _pixel(x: torch.Tensor, row: int, col: int) -> list[int]:
    return [round(v * 255) for v in x[0, :, row, col].tolist()]


def test_grey_becomes_three_equal_channels() -> None:
    image = Image.new("L", (5, 4), 77)
    x = to_tensor(image)
    assert x.shape == (1, 3, 4, 5) and x.dtype == torch.float32
    assert _pixel(x, 3, 4) == [77, 77, 77]


def test_palette_colours_are_looked_up() -> None:
    image = Image.new("P", (6, 3))
    image.putpalette([0, 0, 0, 200, 10, 30] + [0] * 762)
    image.putpixel((2, 1), 1)
    x = to_tensor(image)
    assert _pixel(x, 1, 2) == [200, 10, 30] and _pixel(x, 0, 0) == [0, 0, 0]


def test_rgba_keeps_colour_and_drops_transparency() -> None:
    image = Image.new("RGBA", (4, 4), (10, 120, 250, 0))
    assert _pixel(to_tensor(image), 2, 2) == [10, 120, 250]


def test_16_bit_grey_is_scaled_to_the_full_range() -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")  # a 16-bit greyscale PNG, as scanners write
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert image.mode.startswith("I")
        x = to_tensor(image)
    assert x.shape == (1, 3, 1, 3)
    assert _pixel(x, 0, 0) == [0] * 3 and _pixel(x, 0, 1) == [128] * 3 and _pixel(x, 0, 2) == [255] * 3


def test_cmyk_is_converted_to_rgb() -> None:
    image = Image.new("CMYK", (3, 2), (255, 0, 0, 0))  # pure cyan ink
    assert _pixel(to_tensor(image), 1, 1) == [0, 255, 255]


def test_exif_orientation_is_applied() -> None:
    # 40×20 landscape with a red left half, stored with orientation 6 ("rotate 90° clockwise to view")
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", exif=exif, quality=95)
    with Image.open(io.BytesIO(buffer.getvalue())) as stored:
        assert stored.size == (40, 20)
        x = to_tensor(stored)
    assert x.shape == (1, 3, 40, 20)  # portrait after rotation
    top, bottom = _pixel(x, 5, 10), _pixel(x, 35, 10)
    assert top[0] > 200 and top[2] < 50  # the red half ends up on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_uint8_arrays_are_accepted_and_others_refused() -> None:
    rgb = np.full((3, 4, 3), (1, 2, 3), np.uint8)
    assert _pixel(to_tensor(rgb), 2, 3) == [1, 2, 3]
    assert to_tensor(np.full((3, 4), 9, np.uint8)).shape == (1, 3, 3, 4)
    with pytest.raises(TypeError, match="uint8"):
        to_tensor(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError, match="H×W×3"):
        to_tensor(np.zeros((3, 4, 4), np.uint8))


def test_round_trip_through_a_tensor_is_lossless() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(from_tensor(to_tensor(arr))), arr)
    assert to_rgb(Image.fromarray(arr)).mode == "RGB"
