"""Hostile and odd uploads, generated in memory: each case says what the service must answer.

``expect`` is an HTTP status for refusals, or ``(width, height)`` for inputs the service must enhance into
an image of that (upright) size. The byte-level tricks (truncation, forged headers) are built here so the
tests need no fixture files.
"""

from __future__ import annotations

import io
import re
import socket
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

W, H = 48, 32  # non-square, so a wrong rotation shows in the output size


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    content_type: str = "application/octet-stream"
    filename: str | None = None  # set: send as a multipart form field 'file' with this name
    expect: int | tuple[int, int] = 200


def noise(width: int = W, height: int = H, seed: int = 0) -> Image.Image:
    """A dark, noisy, asymmetric RGB test image (a bright block in the top-left corner)."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((height, width, 3)) * 60).astype(np.uint8)
    arr[: max(1, height // 4), : max(1, width // 3)] += 120
    return Image.fromarray(arr, "RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes that declares ``width``×``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_zlib_bomb(side: int) -> bytes:
    """A real, complete PNG of ``side``² black pixels: ~1000× smaller than its decoded size."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_forged_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to declare ``width``×``height``."""
    data = bytearray(encode(noise(), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def exif_jpeg(orientation: int) -> bytes:
    """The noise image as a JPEG tagged with EXIF ``orientation`` (1–8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noise(), "JPEG", quality=95, exif=exif.tobytes())


def animated(fmt: str, frames: int = 3) -> bytes:
    images = [noise(seed=i) for i in range(frames)]
    if fmt == "GIF":
        images = [im.convert("P") for im in images]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def sixteen_bit_grey() -> bytes:
    arr = (np.random.default_rng(1).random((H, W)) * 12000).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")  # uint16 → mode I;16


def float_tiff() -> bytes:
    arr = np.random.default_rng(2).random((H, W)).astype(np.float32) * 0.3
    return encode(Image.fromarray(arr, "F"), "TIFF")


def heic_declaring(width: int, height: int) -> bytes:
    """A 64×64 HEIC (no crop box) whose image-extent boxes ('ispe') are rewritten to ``width``×``height``."""
    data = bytearray(encode(noise(64, 64), "HEIF"))
    for box in re.finditer(b"ispe", bytes(data)):
        struct.pack_into(">II", data, box.end() + 4, width, height)  # after the version/flags word
    return bytes(data)


def heic_coded_bomb() -> bytes:
    """A 48×32 HEIC: its crop box ('clap') says 48×32, its coded extent is rewritten to 100000²."""
    data = bytearray(encode(noise(), "HEIF"))
    for box in re.finditer(b"ispe", bytes(data)):
        struct.pack_into(">II", data, box.end() + 4, 100_000, 100_000)
    return bytes(data)


def heic_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noise(), "HEIF", exif=exif.tobytes())


def cases(max_megapixels: float) -> list[Case]:
    """Every case; ``max_megapixels`` is the server's limit (the over-limit images are built from it)."""
    png = encode(noise(), "PNG")
    jpeg = encode(noise(), "JPEG", quality=90)
    over = int((max_megapixels * 1e6) ** 0.5) + 64  # a square side just beyond the limit
    heic, avif = encode(noise(), "HEIF"), encode(noise(), "AVIF")
    return [
        # refusals
        Case("empty body", b"", expect=422),
        Case("empty multipart file", b"", filename="empty.png", expect=422),
        Case("truncated PNG (60%)", png[: len(png) * 6 // 10], "image/png", expect=422),
        Case("truncated PNG (header only)", png[:33], "image/png", expect=422),
        Case("truncated JPEG (60%)", jpeg[: len(jpeg) * 6 // 10], "image/jpeg", expect=422),
        Case("JPEG without its end marker", jpeg[:-2], "image/jpeg", expect=422),
        Case("plain text", b"hello, this is not an image\n" * 20, "text/plain", expect=415),
        Case("HTML", b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", "text/html", expect=415),
        Case(
            "SVG",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="48" height="32"><rect width="48" height="32"/></svg>',
            "image/svg+xml",
            expect=415,
        ),
        Case("PDF", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "application/pdf", expect=415),
        Case("text named .png", b"not a png at all", "image/png", filename="photo.png", expect=415),
        Case("PPM (decoder not allow-listed)", encode(noise(), "PPM"), "image/x-portable-pixmap", expect=415),
        Case("ICO (decoder not allow-listed)", encode(noise(), "ICO"), "image/x-icon", expect=415),
        Case("random bytes", np.random.default_rng(3).bytes(4096), expect=415),
        Case("PNG bomb: 100000² declared in 67 bytes", png_header_bomb(100_000, 100_000), "image/png", expect=413),
        Case("PNG bomb: 2³¹-1 × 1 declared", png_header_bomb(2**31 - 1, 1), "image/png", expect=413),
        Case(f"PNG bomb: real {over}² black image", png_zlib_bomb(over), "image/png", expect=413),
        Case("JPEG with forged 65000² frame", jpeg_forged_size(65_000, 65_000), "image/jpeg", expect=413),
        Case(f"JPEG with forged {over}² frame", jpeg_forged_size(over, over), "image/jpeg", expect=413),
        Case("PNG declaring 0×0", png_header_bomb(0, 0), "image/png", expect=422),
        # wrong magic vs declared type: the bytes decide
        Case("PNG sent as image/jpeg", png, "image/jpeg", expect=(W, H)),
        Case("JPEG sent as image/png", jpeg, "image/png", expect=(W, H)),
        Case("PNG in a file named .jpg", png, "image/jpeg", filename="photo.jpg", expect=(W, H)),
        Case("JPEG in a file named .gif", jpeg, "image/gif", filename="photo.gif", expect=(W, H)),
        # odd but valid images
        Case("1×1 RGB", encode(noise(1, 1), "PNG"), "image/png", expect=(1, 1)),
        Case("1×1 black", encode(Image.new("RGB", (1, 1)), "PNG"), "image/png", expect=(1, 1)),
        Case("uniform grey (no contrast)", encode(Image.new("RGB", (W, H), (20, 20, 20)), "PNG"), expect=(W, H)),
        Case("1×300 strip", encode(noise(1, 300), "PNG"), "image/png", expect=(1, 300)),
        Case("300×1 strip", encode(noise(300, 1), "PNG"), "image/png", expect=(300, 1)),
        Case("16-bit grey PNG", sixteen_bit_grey(), "image/png", expect=(W, H)),
        Case("32-bit float TIFF", float_tiff(), "image/tiff", expect=(W, H)),
        Case("grey (L) PNG", encode(noise().convert("L"), "PNG"), "image/png", expect=(W, H)),
        Case("grey+alpha (LA) PNG", encode(noise().convert("LA"), "PNG"), "image/png", expect=(W, H)),
        Case("palette (P) PNG", encode(noise().convert("P"), "PNG"), "image/png", expect=(W, H)),
        Case("RGBA PNG", encode(noise().convert("RGBA"), "PNG"), "image/png", expect=(W, H)),
        Case("1-bit (1) PNG", encode(noise().convert("1"), "PNG"), "image/png", expect=(W, H)),
        Case("CMYK JPEG", encode(noise().convert("CMYK"), "JPEG"), "image/jpeg", expect=(W, H)),
        Case("progressive JPEG", encode(noise(), "JPEG", progressive=True), "image/jpeg", expect=(W, H)),
        Case("BMP", encode(noise(), "BMP"), "image/bmp", expect=(W, H)),
        Case("WebP lossless", encode(noise(), "WEBP", lossless=True), "image/webp", expect=(W, H)),
        Case("animated GIF (3 frames)", animated("GIF"), "image/gif", expect=(W, H)),
        Case("animated WebP (3 frames)", animated("WEBP"), "image/webp", expect=(W, H)),
        Case("multi-page TIFF", animated("TIFF"), "image/tiff", expect=(W, H)),
        Case("multipart PNG", png, "image/png", filename="dark.png", expect=(W, H)),
        *[
            Case(f"EXIF orientation {k}", exif_jpeg(k), "image/jpeg", expect=(H, W) if k >= 5 else (W, H))
            for k in range(1, 9)
        ],
        # phone formats (HEIC is the iPhone default)
        Case("HEIC", heic, "image/heic", expect=(W, H)),
        Case("AVIF", avif, "image/avif", expect=(W, H)),
        Case("HEIC with EXIF orientation 6", heic_exif(6), "image/heic", filename="IMG_0001.HEIC", expect=(H, W)),
        Case("truncated HEIC (60%)", heic[: len(heic) * 6 // 10], "image/heic", expect=422),
        Case("truncated HEIC (header only)", heic[:120], "image/heic", expect=422),
        Case("truncated AVIF (60%)", avif[: len(avif) * 6 // 10], "image/avif", expect=422),
        Case("HEIC bomb: 100000² declared", heic_declaring(100_000, 100_000), "image/heic", expect=413),
        Case(f"HEIC declaring {over}²", heic_declaring(over, over), "image/heic", expect=413),
        Case("HEIC bomb: 100000² coded behind a 48×32 crop", heic_coded_bomb(), "image/heic", expect=422),
    ]


# -- parser bombs: small pixel counts, expensive structure (service/prescan.py refuses them) ---------------


def jpeg_segment_bomb(segments: int) -> bytes:
    """An 8×8 JPEG with ``segments`` empty APP1 segments after its start marker."""
    jpeg = encode(noise(8, 8), "JPEG", quality=90)
    return jpeg[:2] + b"\xff\xe1\x00\x02" * segments + jpeg[2:]


def jpeg_metadata_bomb(megabytes: int) -> bytes:
    """An 8×8 JPEG carrying ``megabytes`` MiB of COM segments (each at its 65533-byte maximum)."""
    jpeg = encode(noise(8, 8), "JPEG", quality=90)
    com = b"\xff\xfe\xff\xff" + b"x" * 65533
    return jpeg[:2] + com * (megabytes * 1024 * 1024 // len(com) + 1) + jpeg[2:]


def jpeg_scan_bomb(side: int, scans: int) -> bytes:
    """A ``side``² progressive JPEG of a flat image whose last AC scan is repeated ``scans`` times."""
    data = encode(Image.new("RGB", (side, side), (12, 10, 8)), "JPEG", quality=90, progressive=True)
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    last = starts[-1]
    end = data.index(b"\xff\xd9", last)
    return data[:end] + data[last:end] * scans + data[end:]


def png_chunk_bomb(chunks: int) -> bytes:
    """A 48×32 PNG with ``chunks`` empty private ancillary chunks before its image data."""
    png = encode(noise(), "PNG")
    idat = png.index(b"IDAT") - 4
    return png[:idat] + _chunk(b"prVt", b"") * chunks + png[idat:]


def gif_comment_bomb(blocks: int) -> bytes:
    """A GIF with ``blocks`` comment extensions before its first frame."""
    gif = encode(noise().convert("P"), "GIF")
    frame = gif.index(b"\x2c")
    while gif[frame - 1] != 0x00 and frame < len(gif):  # the image separator follows a block terminator
        frame = gif.index(b"\x2c", frame + 1)
    return gif[:frame] + b"\x21\xfe\x01x\x00" * blocks + gif[frame:]


def webp_chunk_bomb(chunks: int) -> bytes:
    """A lossless WebP with ``chunks`` unknown RIFF chunks appended (the RIFF size updated)."""
    webp = encode(noise(), "WEBP", lossless=True)
    body = webp[12:] + b"JUNK\x00\x00\x00\x00" * chunks
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def parser_bombs() -> list[Case]:
    """Structure bombs: each must be refused (422) in well under a second, without decoding."""
    return [
        Case("JPEG with 200000 empty APP1 segments", jpeg_segment_bomb(200_000), "image/jpeg", expect=422),
        Case("JPEG with 2 MiB of COM segments", jpeg_metadata_bomb(2), "image/jpeg", expect=422),
        Case("progressive JPEG with 2000 scans", jpeg_scan_bomb(256, 2000), "image/jpeg", expect=422),
        Case("PNG with 200000 private chunks", png_chunk_bomb(200_000), "image/png", expect=422),
        Case("GIF with 200000 comment blocks", gif_comment_bomb(200_000), "image/gif", expect=422),
        Case("WebP with 100000 unknown chunks", webp_chunk_bomb(100_000), "image/webp", expect=422),
    ]


def until_closed(sock: socket.socket, cap_s: float) -> tuple[bytes, float | None]:
    """What the server sent, and seconds until it closed the connection (None: still open at ``cap_s``)."""
    start = time.monotonic()
    answer = b""
    while (left := cap_s - (time.monotonic() - start)) > 0:
        sock.settimeout(left)
        try:
            more = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            more = b""
        if not more:
            return answer, time.monotonic() - start
        answer += more
    return answer, None


def trickle(sock: socket.socket, head: bytes, per_byte_s: float) -> bytes:
    """Send ``head`` a byte at a time, waiting up to ``per_byte_s`` for an answer after each; the first answer
    (empty if none came, or the server closed the connection)."""
    sock.settimeout(per_byte_s)
    for byte in head:
        try:
            sock.sendall(bytes([byte]))
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        if answer:
            return answer
    return b""
