"""Decoding uploads safely and encoding results (docs/service.md, "Input policy").

Only the allow-listed Pillow decoders are tried (else 415); the structure is pre-scanned (:mod:`service.prescan`)
and the header's pixel count checked before the pixels are decoded (413), the decoded size again after (a header
can lie); broken files are 422. Images become upright 8-bit RGB (:func:`model.image.to_rgb`); outputs carry the
input's ICC profile and EXIF (:func:`model.image.read_metadata`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from kind_serve.model.image import Metadata, read_metadata, to_rgb

from .prescan import TooComplex, prescan, sniff
from .problems import Problem

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


def check_type(data: bytes) -> None:
    """422 for no data, 415 unless the leading bytes name an allow-listed format (without parsing)."""
    if not data:
        raise Problem(422, "Empty image", "the request carried no image data", kind="bad-image")
    if sniff(data) is None:
        raise _unsupported()


def _unsupported() -> Problem:
    detail = f"the data is not an image in a supported format ({', '.join(DECODERS)})"
    return Problem(415, "Unsupported image type", detail, kind="unsupported-image")


def _open(data: bytes, scan: bool = False) -> Image.Image:
    """The image opened by an allow-listed decoder (header read, pixels not); with ``scan``, pre-scanned first."""
    if not data:
        raise Problem(422, "Empty image", "the request carried no image data", kind="bad-image")
    if scan:
        try:
            prescan(data)
        except TooComplex as exc:
            raise Problem(422, "Image too complex", str(exc), kind="too-complex-image") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=DECODERS)
    except UnidentifiedImageError:
        if sniff(data) not in (None, "bmp"):  # an allow-listed format's leading bytes, broken after them
            raise Problem(422, "Corrupt image", "the image header is truncated or invalid", kind="bad-image") from None
        raise _unsupported() from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Problem(413, "Image too large", "the image declares too many pixels", kind="too-large") from None
    except Exception as exc:  # malformed headers raise a zoo of exception types
        raise Problem(422, "Corrupt image", f"the image header could not be read ({exc})", kind="bad-image") from None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise Problem(422, "Corrupt image", f"the image declares an empty size {width}×{height}", kind="bad-image")
    if width * height > max_pixels:
        detail = f"the image is {width}×{height} = {width * height / 1e6:.1f} megapixels; "
        detail += f"the limit is {max_pixels / 1e6:g} megapixels: downscale it first"
        raise Problem(413, "Image too large", detail, kind="too-large")


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """The upload opened (header read, pixels not) after the structure and header megapixel checks."""
    image = _open(data, True)
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
        detail = f"the image could not be decoded ({type(exc).__name__}: {exc})"
        raise Problem(422, "Corrupt image", detail, kind="bad-image") from None
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
        if format_param.lower() not in FORMAT_ALIASES:
            detail = f"format must be png, jpeg or webp, got {format_param!r}"
            raise Problem(422, "Unknown format", detail, kind="bad-format")
        return FORMAT_ALIASES[format_param.lower()]
    if not accept or not accept.strip():
        return "png"
    offers = [(_quality(params), media.strip().lower()) for media, *params in (p.split(";") for p in accept.split(","))]
    for q, media in sorted(offers, key=lambda offer: -offer[0]):  # stable: equal q keep the client's order
        if q > 0 and media in ("*/*", "image/*"):
            return "png"
        if q > 0 and media in MEDIA_TYPES.values():
            return media.removeprefix("image/")
    detail = f"cannot produce any of {accept!r}; available: image/png, image/jpeg, image/webp"
    raise Problem(406, "Not Acceptable", detail, kind="not-acceptable")


def _quality(params: list[str]) -> float:
    """The ``q=`` of one Accept entry's parameters (the last one given; 1 without, 0 when unreadable)."""
    q = 1.0
    for param in (p.strip() for p in params):
        if param.startswith("q="):
            try:
                q = float(param[2:])
            except ValueError:
                q = 0.0
    return q
