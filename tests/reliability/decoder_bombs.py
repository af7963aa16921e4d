"""Small files whose decoding costs far more than they say (issue 25): each a few hundred bytes to a few KB.

- :func:`tiff_lying_tile`: a 64×64 TIFF whose one deflate tile is declared ``tile``² pixels;
- :func:`gif_huge_screen`: a GIF whose logical screen is ``side``² and whose only frame is one pixel;
- :func:`png_strip`: a ``width``×1 PNG (an extreme aspect ratio);
- :func:`avif_lying_container`: an AVIF whose 'ispe' box says 64×64 over a larger AV1 frame.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

from PIL import Image


def tiff_lying_tile(tile: int = 25_008, side: int = 64) -> bytes:
    """A little-endian RGB TIFF of ``side``² pixels stored as one deflate tile declared ``tile``×``tile``."""
    data = zlib.compress(b"\0" * 3 * side * side, 9)
    entries = [
        (256, 3, 1, side),  # ImageWidth
        (257, 3, 1, side),  # ImageLength
        (258, 3, 3, None),  # BitsPerSample 8,8,8 (at an offset)
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 2),  # Photometric: RGB
        (277, 3, 1, 3),  # SamplesPerPixel
        (284, 3, 1, 1),  # PlanarConfiguration: contiguous
        (322, 4, 1, tile),  # TileWidth
        (323, 4, 1, tile),  # TileLength
        (324, 4, 1, None),  # TileOffsets
        (325, 4, 1, len(data)),  # TileByteCounts
    ]
    ifd_at = 8
    after = ifd_at + 2 + 12 * len(entries) + 4
    bits_at, data_at = after, after + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        if tag == 258:
            value = bits_at
        elif tag == 324:
            value = data_at
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0) + struct.pack("<3H", 8, 8, 8) + data
    return bytes(out)


def gif_huge_screen(side: int = 7000) -> bytes:
    """A GIF89a with a ``side``×``side`` logical screen and one 1×1 frame: 43 bytes for ``side``² pixels."""
    header = b"GIF89a" + struct.pack("<HH", side, side) + bytes([0x80, 0, 0]) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\0" + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def png_strip(width: int = 10_000_000, height: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def avif_lying_container(side: int = 2048, declared: int = 64) -> bytes:
    """A ``side``² AVIF (flat colour, a few KB) whose 'ispe' boxes are rewritten to ``declared``²."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (12, 10, 8)).save(buf, "AVIF", quality=30)
    data = bytearray(buf.getvalue())
    for box in re.finditer(b"ispe", bytes(data)):
        struct.pack_into(">II", data, box.end() + 4, declared, declared)
    return bytes(data)
