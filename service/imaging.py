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
from .prescan import ScanLimits, TooComplex, prescan

DECODERS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_ALIASES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
# leading bytes of allow-listed formats, to tell a broken PNG (422) from something else (415)
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
# HEIF/AVIF files open with an ISO-BMFF 'ftyp' box whose brand names the image kind
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def _looks_like_allowed(data: bytes) -> bool:
    if data.startswith(MAGIC) or (data.startswith(b"RIFF") and data[8:12] == b"WEBP"):
        return True
    return data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


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
        if _looks_like_allowed(data):
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


def sniff(data: bytes) -> str | None:
    """The format of bytes that :func:`probe` accepted, from their magic bytes alone (no parsing)."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if data.startswith(b"BM"):
        return "bmp"
    if data[4:8] == b"ftyp":
        return "avif" if data[8:12] in (b"avif", b"avis") else "heif"
    return None


def probe(data: bytes, max_pixels: int, *, scan: ScanLimits) -> Header:
    """Format and size from the header only, with the structure and megapixel checks."""
    with open_checked(data, max_pixels, scan=scan) as image:
        assert image.format is not None  # Image.open names the format it opened
        return Header(image.format.lower(), image.width, image.height)


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


def decode(data: bytes, max_pixels: int, *, scan: ScanLimits) -> Image.Image:
    """Upright 8-bit RGB image from upload bytes, following the module's policy (in this process: the
    service decodes in :mod:`service.decoding`'s capped processes, which call the two steps above)."""
    with open_checked(data, max_pixels, scan=scan) as image:
        return load_rgb(image, max_pixels)


def metadata(data: bytes) -> Metadata:
    """ICC profile and EXIF (orientation 1) of upload bytes, from the header (call after :func:`decode`)."""
    with _open(data) as image:
        return read_metadata(image)


def encode(image: Image.Image, fmt: str, meta: Metadata | None = None) -> bytes:
    """PNG (fast compression), JPEG (quality 92) or WebP (quality 90), carrying ``meta`` when given."""
    buf = io.BytesIO()
    params = meta.save_params(fmt) if meta is not None else {}
    if fmt == "png":
        image.save(buf, "PNG", compress_level=1, **params)  # level 1: ~4× faster than the default, ~10% more bytes
    elif fmt == "jpeg":
        image.save(buf, "JPEG", quality=92, **params)
    elif fmt == "webp":
        image.save(buf, "WEBP", quality=90, method=4, **params)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def _accept_entries(accept: str) -> list[tuple[float, str]]:
    entries = []
    for i, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media, q = fields[0].lower(), 1.0
        for param in fields[1:]:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media and q > 0:
            entries.append((-q, i, media))
    return [(-q, media) for q, _, media in sorted(entries)]


def negotiate(format_param: str | None, accept: str | None, default: str = "png") -> str:
    """Output format from ``format=`` (wins) or the Accept header; 406 when nothing offered fits."""
    if format_param:
        fmt = FORMAT_ALIASES.get(format_param.lower())
        if fmt is None:
            raise Problem(
                422, "Unknown format", f"format must be png, jpeg or webp, got {format_param!r}", kind="bad-format"
            )
        return fmt
    if not accept or not accept.strip():
        return default
    for _, media in _accept_entries(accept):
        if media in ("*/*", "image/*"):
            return default
        for fmt, mt in MEDIA_TYPES.items():
            if media == mt:
                return fmt
    raise Problem(
        406,
        "Not Acceptable",
        f"cannot produce any of {accept!r}; available: image/png, image/jpeg, image/webp",
        kind="not-acceptable",
    )
