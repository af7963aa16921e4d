"""Structural pre-scan of uploads: refuse files whose *structure* would make a decoder slow, before it runs.

The pixel limit bounds the decoded size, but not the work of reading a file's structure: Pillow walks JPEG
markers, PNG chunks and GIF blocks in Python, and libjpeg re-reads the whole coefficient buffer for every
progressive scan. An 8×8 JPEG padded with millions of empty APP1 segments, a PNG of a million private chunks
or a progressive JPEG with thousands of scans cost seconds of CPU per parse at pixel counts far below the
limit. This module walks the container only (segment headers, never pixel data), in Python over the bytes
(NumPy for the one linear search), and refuses more than :class:`ScanLimits` allows:

- JPEG: segments other than scans (APPn, COM, tables …), metadata bytes (APPn + COM), scans (SOS); the
  entropy-coded data after each scan header is skipped by a vectorised search for the next marker;
- PNG: chunks other than image data (IDAT, fcTL/fdAT of animations), their bytes, and chunks in all;
- GIF: extension blocks before the first frame and their bytes;
- WebP: RIFF chunks other than image data (VP8, VP8L, ALPH, ANMF), their bytes, and chunks in all;
- TIFF: tags of the first IFD and the bytes of their values (strip/tile offset arrays excepted).

Other formats (BMP, and HEIC/AVIF when a plugin provides them) pass unchanged; so do files the walk cannot
follow (truncated, corrupt): the decoder then refuses them with its own error. A walk costs O(segments), at
most tens of milliseconds for a 64 MiB upload (docs/reliability.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# chunks in a PNG or WebP file, image data included: a well-formed 64 MiB file needs a few thousand
_MAX_CHUNKS = 1 << 17
# inside entropy-coded data 0xFF is followed by a stuffed 0x00, a restart marker (0xD0–0xD7) or fill (0xFF);
# any other byte after 0xFF is a marker; searched in windows growing from 4 KiB to 4 MiB
_FIRST_WINDOW, _WINDOW = 1 << 12, 1 << 22
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_JPEG_METADATA = {*range(0xE0, 0xF0), 0xFE}
_PNG_IMAGE_DATA = {b"IDAT", b"fcTL", b"fdAT"}
_WEBP_IMAGE_DATA = {b"VP8 ", b"VP8L", b"ALPH", b"ANMF", b"VP8X", b"ANIM"}
_TIFF_ARRAYS = {273, 279, 324, 325}  # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts
_TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}


@dataclass(frozen=True)
class ScanLimits:
    """What one upload's structure may hold (set from :class:`service.config.Settings`)."""

    max_segments: int
    max_metadata_bytes: int
    max_scans: int


@dataclass(frozen=True)
class Structure:
    """What the walk counted: segments (or chunks, blocks, tags) besides image data, their bytes, scans."""

    format: str
    segments: int
    metadata_bytes: int
    scans: int = 0


class TooComplex(ValueError):
    """The file's structure exceeds a :class:`ScanLimits` bound; the message says which and by how much."""


def prescan(data: bytes | memoryview, limits: ScanLimits) -> Structure | None:
    """Walk the container of ``data``; :class:`TooComplex` when over ``limits``, ``None`` for formats not walked."""
    head = bytes(data[:12])
    if head.startswith(b"\xff\xd8"):
        return _jpeg(data, limits)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _count_chunks(_png_chunks(data), _PNG_IMAGE_DATA, _Counter("PNG", limits, "ancillary chunks"))
    if head.startswith((b"GIF87a", b"GIF89a")):
        return _gif(data, limits)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _count_chunks(_webp_chunks(data), _WEBP_IMAGE_DATA, _Counter("WebP", limits, "metadata chunks"))
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return _tiff(data, limits)
    return None


class _Counter:
    def __init__(self, fmt: str, limits: ScanLimits, what: str) -> None:
        self.fmt, self.limits, self.what = fmt, limits, what
        self.segments = self.metadata = self.scans = 0

    def segment(self, size: int, *, metadata: bool = True) -> None:
        self.segments += 1
        if self.segments > self.limits.max_segments:
            raise TooComplex(
                f"the {self.fmt} has more than {self.limits.max_segments} {self.what}; strip its metadata first"
            )
        if metadata:
            self.metadata += size
            if self.metadata > self.limits.max_metadata_bytes:
                raise TooComplex(
                    f"the {self.fmt} carries more than {self.limits.max_metadata_bytes} bytes of metadata; "
                    "strip its metadata first"
                )

    def scan(self) -> None:
        self.scans += 1
        if self.scans > self.limits.max_scans:
            raise TooComplex(
                f"the progressive JPEG has more than {self.limits.max_scans} scans; re-encode it (baseline or "
                "standard progressive)"
            )

    def result(self) -> Structure:
        return Structure(self.fmt, self.segments, self.metadata, self.scans)


def _jpeg(data: bytes | memoryview, limits: ScanLimits) -> Structure:
    count = _Counter("JPEG", limits, "segments")
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
        if marker in _JPEG_STANDALONE or marker == 0xD8:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            break
        end = pos + 2 + length
        if marker == 0xDA:
            count.scan()
            found = _next_marker(data, end)
            if found < 0:
                break
            pos = found
            continue
        count.segment(length, metadata=marker in _JPEG_METADATA)
        pos = end
    return count.result()


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


def _png_chunks(data: bytes | memoryview) -> Iterator[tuple[bytes, int]]:
    n, pos = len(data), 8
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        yield kind, length
        if kind == b"IEND":
            break
        pos += 12 + length


def _count_chunks(chunks: Iterator[tuple[bytes, int]], image_data: set[bytes], count: _Counter) -> Structure:
    """Count a PNG's or WebP's (kind, length) chunks: at most ``_MAX_CHUNKS`` in all, the ones not image data
    as segments."""
    for i, (kind, length) in enumerate(chunks, 1):
        if i > _MAX_CHUNKS:
            raise TooComplex(f"the {count.fmt} has more than {_MAX_CHUNKS} chunks; re-encode it")
        if kind not in image_data:
            count.segment(length)
    return count.result()


def _gif(data: bytes | memoryview, limits: ScanLimits) -> Structure:
    count = _Counter("GIF", limits, "extension blocks before the first frame")
    n = len(data)
    if n < 13:
        return count.result()
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while pos + 2 <= n and data[pos] == 0x21:  # extension block; 0x2C (first frame) or 0x3B ends the walk
        pos += 2
        size = 0
        while pos < n and data[pos]:  # data sub-blocks of at most 255 bytes each, up to an empty one
            size += data[pos]
            if size > limits.max_metadata_bytes:
                count.segment(size)  # raises
            pos += data[pos] + 1
        pos += 1
        count.segment(size)
    return count.result()


def _webp_chunks(data: bytes | memoryview) -> Iterator[tuple[bytes, int]]:
    n, pos = len(data), 12
    while pos + 8 <= n:
        kind, length = struct.unpack_from("<4sI", data, pos)
        yield kind, length
        pos += 8 + length + (length & 1)  # chunks are padded to an even size


def _tiff(data: bytes | memoryview, limits: ScanLimits) -> Structure:
    count = _Counter("TIFF", limits, "tags in its first directory")
    order = "<" if data[0] == 0x49 else ">"
    n = len(data)
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > n:
        return count.result()
    (entries,) = struct.unpack_from(order + "H", data, ifd)
    for i in range(min(entries, (n - ifd - 2) // 12)):
        tag, kind, values = struct.unpack_from(order + "HHI", data, ifd + 2 + 12 * i)
        size = values * _TIFF_TYPE_SIZES.get(kind, 1)
        if tag in _TIFF_ARRAYS:
            if values > _MAX_CHUNKS * 8:
                raise TooComplex(f"the TIFF declares {values} strips or tiles; re-encode it")
            count.segment(0, metadata=False)
        else:
            count.segment(size)
    return count.result()
