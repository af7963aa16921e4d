"""Decoding uploads safely and encoding results.

Decoding policy (see docs/service.md, "Input policy"):

- only these Pillow decoders are tried: PNG, JPEG, WebP, BMP, TIFF, GIF, HEIF (HEIC) and AVIF; anything
  else → 415;
- the pixel count is read from the header and checked against the megapixel limit *before* the pixels
  are decoded (decompression bombs) → 413, and the decoded size again after (a header can lie);
- the container's structure is walked first (:mod:`service.prescan`): too many metadata segments or chunks,
  too much metadata or too many progressive scans → 422, before any decoder runs;
- truncated or corrupt files → 422; animated GIF/WebP/multi-page TIFF use their first frame;
- EXIF orientation is applied and grey, palette, alpha, CMYK, 16-bit and float images become 8-bit RGB
  by :func:`model.image.to_rgb` (alpha is dropped: the colour is kept, the transparency ignored);
- outputs carry the input's RGB ICC profile and EXIF (orientation 1) per :func:`model.image.read_metadata`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from kind_serve.model.image import Metadata, read_metadata, to_rgb

from .errors import Problem
from .prescan import ScanLimits, TooComplex, prescan, sniff

DECODERS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_ALIASES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
# PNG at compression level 1: about 4× faster than the default for about 10% more bytes
_SAVE: dict[str, tuple[str, dict[str, int]]] = {
    "png": ("PNG", {"compress_level": 1}),
    "jpeg": ("JPEG", {"quality": 92}),
    "webp": ("WEBP", {"quality": 90, "method": 4}),
}


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int


def _open(data: bytes, scan: ScanLimits | None = None) -> Image.Image:
    """The image opened by an allow-listed decoder (header read, pixels not); with ``scan``, pre-scanned first."""
    if not data:
        raise Problem(422, "Empty image", "the request carried no image data", kind="bad-image")
    if scan is not None:
        try:
            prescan(data, scan)
        except TooComplex as exc:
            raise Problem(422, "Image too complex", str(exc), kind="too-complex-image") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=DECODERS)
    except UnidentifiedImageError:
        if sniff(data) not in (None, "bmp"):  # an allow-listed format's leading bytes, broken after them
            raise Problem(422, "Corrupt image", "the image header is truncated or invalid", kind="bad-image") from None
        raise Problem(
            415,
            "Unsupported image type",
            f"the data is not an image in a supported format ({', '.join(DECODERS)})",
            kind="unsupported-image",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Problem(413, "Image too large", "the image declares too many pixels", kind="too-large") from None
    except Exception as exc:  # malformed headers raise a zoo of exception types
        raise Problem(422, "Corrupt image", f"the image header could not be read ({exc})", kind="bad-image") from None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise Problem(422, "Corrupt image", f"the image declares an empty size {width}×{height}", kind="bad-image")
    if width * height > max_pixels:
        raise Problem(
            413,
            "Image too large",
            f"the image is {width}×{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:g} megapixels: downscale it first",
            kind="too-large",
        )


def open_checked(data: bytes, max_pixels: int, *, scan: ScanLimits) -> Image.Image:
    """The upload opened (header read, pixels not) after the structure and header megapixel checks."""
    image = _open(data, scan)
    try:
        _check_size(image.width, image.height, max_pixels)
    except Problem:
        image.close()
        raise
    return image


def load_rgb(image: Image.Image, max_pixels: int) -> Image.Image:
    """Upright 8-bit RGB pixels of an image from :func:`open_checked`; the decoded size is checked again,
    since a header can lie about what its codestream holds."""
    try:
        image.seek(0)
        image.load()
        rgb = to_rgb(image)
    except MemoryError:
        raise
    except Exception as exc:  # truncated data, bad chunks, exotic modes
        raise Problem(
            422, "Corrupt image", f"the image could not be decoded ({type(exc).__name__}: {exc})", kind="bad-image"
        ) from None
    _check_size(rgb.width, rgb.height, max_pixels)
    return rgb


def metadata(data: bytes) -> Metadata:
    """ICC profile and EXIF (orientation 1) of upload bytes, from a fresh header: reading it marks the EXIF
    upright, which :func:`load_rgb` must not see."""
    with _open(data) as image:
        return read_metadata(image)


def encode(image: Image.Image, fmt: str, meta: Metadata | None = None) -> bytes:
    """PNG, JPEG or WebP (see :data:`_SAVE`), carrying ``meta`` when given."""
    buf = io.BytesIO()
    pil_format, options = _SAVE[fmt]
    image.save(buf, pil_format, **options, **(meta.save_params(fmt) if meta is not None else {}))
    return buf.getvalue()


def negotiate(format_param: str | None, accept: str | None) -> str:
    """Output format from ``format=`` (wins) or the Accept header, highest q first (PNG for ``*/*``); 406 when
    nothing offered fits."""
    if format_param:
        fmt = FORMAT_ALIASES.get(format_param.lower())
        if fmt is None:
            raise Problem(
                422, "Unknown format", f"format must be png, jpeg or webp, got {format_param!r}", kind="bad-format"
            )
        return fmt
    if not accept or not accept.strip():
        return "png"
    offers: list[tuple[float, str]] = []
    for part in accept.split(","):
        media, *params = (f.strip() for f in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media and q > 0:
            offers.append((q, media.lower()))
    for _, media in sorted(offers, key=lambda offer: -offer[0]):  # stable: equal q keep the client's order
        if media in ("*/*", "image/*"):
            return "png"
        if media in MEDIA_TYPES.values():
            return media.removeprefix("image/")
    raise Problem(
        406,
        "Not Acceptable",
        f"cannot produce any of {accept!r}; available: image/png, image/jpeg, image/webp",
        kind="not-acceptable",
    )
