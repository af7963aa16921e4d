"""Structural pre-scan of uploads: refuse files whose *structure* would make a decoder slow, before it runs.

The pixel limit bounds the decoded size, not the work of reading a file's structure: Pillow walks JPEG markers,
PNG chunks and GIF blocks in Python, and libjpeg re-reads its coefficients for every progressive scan. So the
container is walked first (headers only, never pixel data) and refused past :class:`ScanLimits`: JPEG segments,
metadata bytes and scans; PNG and WebP chunks; GIF extensions before the first frame; the first TIFF directory's
tags. Other formats, and files the walk cannot follow, pass to the decoder (docs/reliability.md).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# leading bytes of the allow-listed formats (as Pillow's own checks read them); HEIF/AVIF open with an
# ISO-BMFF 'ftyp' box whose brand names the image kind
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"BM": "bmp",
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
# chunks in a file, image data included: a well-formed 64 MiB file needs a few thousand
_MAX_CHUNKS = 1 << 17
# inside entropy-coded data 0xFF is followed by a stuffed 0x00, a restart marker (0xD0–0xD7) or fill (0xFF);
# any other byte after 0xFF is a marker; searched in windows growing from 4 KiB to 4 MiB
_FIRST_WINDOW, _WINDOW = 1 << 12, 1 << 22
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, restarts, start of image: no length follows
_JPEG_METADATA = {*range(0xE0, 0xF0), 0xFE}
_PNG_IMAGE_DATA = {b"IDAT", b"fcTL", b"fdAT"}
_WEBP_IMAGE_DATA = {b"VP8 ", b"VP8L", b"ALPH", b"ANMF", b"VP8X", b"ANIM"}
_TIFF_ARRAYS = {273, 279, 324, 325}  # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts
# bytes per value of TIFF field types 0–18 (BYTE, ASCII, SHORT, LONG, RATIONAL … IFD8); others count 1
_TIFF_TYPE_SIZES = dict(enumerate((1, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 1, 1, 8, 8, 8)))


def sniff(data: bytes | memoryview) -> str | None:
    """The allow-listed format the leading bytes name (``"png"``, ``"jpeg"`` … ``"heif"``), without parsing."""
    head = bytes(data[:12])
    if head.startswith(b"RIFF"):
        return "webp" if head[8:12] == b"WEBP" else None
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "avif" if head[8:12] in (b"avif", b"avis") else "heif"
    return next((fmt for magic, fmt in _SIGNATURES.items() if head.startswith(magic)), None)


@dataclass(frozen=True)
class ScanLimits:
    """What one upload's structure may hold."""

    max_segments: int
    max_metadata_bytes: int
    max_scans: int


# what one upload's structure may hold: far above any camera's or editor's output, far below a parser bomb
SCAN_LIMITS = ScanLimits(max_segments=256, max_metadata_bytes=1 << 20, max_scans=100)


class TooComplex(ValueError):
    """The file's structure exceeds a :class:`ScanLimits` bound; the message says which and by how much."""


@dataclass
class Structure:
    """What the walk counted, refusing as soon as a count passes its limit: segments (or chunks, blocks, tags)
    besides image data, their metadata bytes, scans, and chunks in all."""

    format: str
    what: str = field(repr=False)  # what its segments are called in a refusal
    limits: ScanLimits = field(repr=False)
    segments: int = 0
    metadata_bytes: int = 0
    scans: int = 0
    chunks: int = 0

    def add(self, size: int, kind: Literal["metadata", "table", "image", "scan"] = "metadata") -> None:
        """Count one chunk: metadata (``size`` bytes of it), another non-image segment, image data or a scan."""
        self.chunks += 1
        self.scans += kind == "scan"
        self.segments += kind in ("metadata", "table")
        self.metadata_bytes += size if kind == "metadata" else 0
        limits, fmt, strip = self.limits, self.format, "strip its metadata first"
        if self.chunks > _MAX_CHUNKS:
            raise TooComplex(f"the {fmt} has more than {_MAX_CHUNKS} chunks; re-encode it")
        if self.scans > limits.max_scans:
            detail = "re-encode it (baseline or standard progressive)"
            raise TooComplex(f"the progressive JPEG has more than {limits.max_scans} scans; {detail}")
        if self.segments > limits.max_segments:
            raise TooComplex(f"the {fmt} has more than {limits.max_segments} {self.what}; {strip}")
        if self.metadata_bytes > limits.max_metadata_bytes:
            raise TooComplex(f"the {fmt} carries more than {limits.max_metadata_bytes} bytes of metadata; {strip}")


def prescan(data: bytes | memoryview, limits: ScanLimits = SCAN_LIMITS) -> Structure | None:
    """Walk the container of ``data``; :class:`TooComplex` when over ``limits``, ``None`` for formats not walked."""
    fmt = sniff(data)
    if fmt not in _WALKS:
        return None
    name, what, walk = _WALKS[fmt]
    found = Structure(name, what, limits)
    walk(data, found)
    return found


def _jpeg(data: bytes | memoryview, found: Structure) -> None:
    n, pos = len(data), 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            break  # not at a marker: corrupt, the decoder reports it
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image; anything after it (MPF frames, trailers) is not decoded as this image
            break
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            break
        if marker != 0xDA:
            found.add(length, "metadata" if marker in _JPEG_METADATA else "table")
            pos += 2 + length
            continue
        found.add(length, "scan")
        pos = _next_marker(data, pos + 2 + length)
        if pos < 0:
            break


def _next_marker(data: bytes | memoryview, start: int) -> int:
    """Offset of the first marker (0xFF then a marker byte) at or after ``start``, or -1.

    Vectorised over windows (a regular expression tests each 0xFF in the regex engine: 64 MiB of stuffed
    0xFF00 pairs take it over a second).
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    lo, size = start, _FIRST_WINDOW  # growing windows: short scans cost little, long ones few iterations
    while lo < len(buf) - 1:
        window = buf[lo : min(lo + size + 1, len(buf))]
        is_ff = window[:-1] == 0xFF
        if np.count_nonzero(is_ff) * 64 < len(window):  # sparse, as in real entropy data: test each 0xFF
            ff = np.flatnonzero(is_ff)
            hits = ff[_is_marker(window[ff + 1])]
            first = int(hits[0]) if hits.size else -1
        else:  # dense (stuffed 0xFF00 runs): test every position, no index arrays
            mask = is_ff & _is_marker(window[1:])
            first = int(mask.argmax()) if mask.any() else -1
        if first >= 0:
            return lo + first
        lo, size = lo + size, min(size * 2, _WINDOW)
    return -1


def _is_marker(after: np.ndarray) -> np.ndarray:
    """Which bytes after a 0xFF make it a marker: not 0x00, not fill (0xFF), not a restart (0xD0–0xD7)."""
    return (after != 0x00) & (after != 0xFF) & ((after - np.uint8(0xD0)) >= 8)  # uint8 wraps below 0xD0


def _png(data: bytes | memoryview, found: Structure) -> None:
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        found.add(length, "image" if kind in _PNG_IMAGE_DATA else "metadata")
        if kind == b"IEND":
            break
        pos += 12 + length


def _webp(data: bytes | memoryview, found: Structure) -> None:
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, pos)
        found.add(length, "image" if kind in _WEBP_IMAGE_DATA else "metadata")
        pos += 8 + length + (length & 1)  # chunks are padded to an even size


def _gif(data: bytes | memoryview, found: Structure) -> None:
    n = len(data)
    if n < 13:
        return
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while pos + 2 <= n and data[pos] == 0x21:  # extension block; 0x2C (first frame) or 0x3B ends the walk
        pos += 2
        size = 0
        while pos < n and data[pos]:  # data sub-blocks of at most 255 bytes each, up to an empty one
            size += data[pos]
            if size > found.limits.max_metadata_bytes:
                found.add(size)  # raises, before a block of millions of sub-blocks is walked to its end
            pos += data[pos] + 1
        pos += 1
        found.add(size)


def _tiff(data: bytes | memoryview, found: Structure) -> None:
    order = "<" if data[0] == 0x49 else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return
    (entries,) = struct.unpack_from(order + "H", data, ifd)
    for i in range(min(entries, (len(data) - ifd - 2) // 12)):
        tag, kind, values = struct.unpack_from(order + "HHI", data, ifd + 2 + 12 * i)
        if tag in _TIFF_ARRAYS and values > _MAX_CHUNKS * 8:
            raise TooComplex(f"the TIFF declares {values} strips or tiles; re-encode it")
        found.add(values * _TIFF_TYPE_SIZES.get(kind, 1), "table" if tag in _TIFF_ARRAYS else "metadata")


_WALKS: dict[str | None, tuple[str, str, Callable[[bytes | memoryview, Structure], None]]] = {
    "jpeg": ("JPEG", "segments", _jpeg),
    "png": ("PNG", "ancillary chunks", _png),
    "gif": ("GIF", "extension blocks before the first frame", _gif),
    "webp": ("WebP", "metadata chunks", _webp),
    "tiff": ("TIFF", "tags in its first directory", _tiff),
}
