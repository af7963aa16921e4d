"""The structural pre-scan (service/prescan.py) on its own: bombs refused with a reason, real files passed.

Every odd-but-valid upload of the hostile set must pass the scan untouched (a false refusal would be a
regression for users); every structure bomb must be refused naming the limit it broke.
"""

from __future__ import annotations

import pytest

from kind_serve.service.prescan import SCAN_LIMITS, ScanLimits, TooComplex, prescan

from . import hostile

LIMITS = SCAN_LIMITS
VALID = [c for c in hostile.cases(4.0) if not isinstance(c.expect, int)]
BOMBS = hostile.parser_bombs()


@pytest.mark.parametrize("case", VALID, ids=[c.name for c in VALID])
def test_valid_images_pass(case: hostile.Case) -> None:
    prescan(case.body, LIMITS)  # no TooComplex


@pytest.mark.parametrize("case", BOMBS, ids=[c.name for c in BOMBS])
def test_structure_bombs_are_refused(case: hostile.Case) -> None:
    with pytest.raises(TooComplex, match="more than"):
        prescan(case.body, LIMITS)


def test_limits_are_those_configured() -> None:
    """Raising a limit lets the same file through: the refusal comes from the setting, not a constant."""
    bomb = hostile.jpeg_scan_bomb(64, 150)
    with pytest.raises(TooComplex, match="scans"):
        prescan(bomb, ScanLimits(max_segments=256, max_metadata_bytes=1 << 20, max_scans=100))
    structure = prescan(bomb, ScanLimits(max_segments=256, max_metadata_bytes=1 << 20, max_scans=1000))
    assert structure is not None and structure.scans > 150


def test_counts_of_a_progressive_jpeg() -> None:
    data = hostile.encode(hostile.noise(), "JPEG", progressive=True)
    structure = prescan(data, LIMITS)
    assert structure is not None and structure.format == "JPEG"
    assert 2 <= structure.scans <= 20 and structure.segments < 40


def test_exif_and_icc_fit_the_metadata_limit() -> None:
    """A camera-like JPEG: 60 KiB of EXIF plus a 500 KiB ICC profile split over APP2 segments passes."""
    jpeg = hostile.encode(hostile.noise(), "JPEG")
    app1 = b"\xff\xe1" + (2 + 60 * 1024).to_bytes(2, "big") + b"Exif\x00\x00" + b"\x00" * (60 * 1024 - 6)
    app2 = b"\xff\xe2\xff\xff" + b"\x00" * 65533
    data = jpeg[:2] + app1 + app2 * 8 + jpeg[2:]
    structure = prescan(data, LIMITS)
    assert structure is not None and structure.metadata_bytes > 500 * 1024


def test_formats_not_walked_pass_through() -> None:
    assert prescan(hostile.encode(hostile.noise(), "BMP"), LIMITS) is None
    assert prescan(b"\x00\x00\x00\x1cftypheic" + b"\x00" * 64, LIMITS) is None  # HEIC/AVIF: the plugin decides


@pytest.mark.parametrize("dense", [False, True], ids=["sparse 0xFF", "stuffed 0xFF00 runs"])
def test_marker_search_agrees_with_a_regular_expression(dense: bool) -> None:
    """The vectorised search finds the same first marker as the obvious regex, across window boundaries."""
    import re

    import numpy as np

    from kind_serve.service.prescan import _next_marker

    rng = np.random.default_rng(0)
    regex = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
    for at in (0, 1, 4095, 4096, 4097, 12287, 12288, 100_000, 300_001):
        if dense:
            body = bytearray(b"\xff\x00" * (at // 2 + 8))[: at + 16]
        else:
            body = bytearray(rng.integers(0, 255, at + 16, dtype=np.uint8).tobytes())
            body = bytearray(body.replace(b"\xff", b"\xfe"))
            for i in rng.integers(0, at + 15, at // 200 + 1):  # stuffed bytes, restarts and fill
                body[i : i + 2] = rng.choice([b"\xff\x00", b"\xff\xd3", b"\xff\xff"])
            body = bytearray(regex.sub(b"\xfe\xfe", bytes(body)))  # no marker before `at`
        body[at : at + 2] = b"\xff\xd9"
        data = bytes(body)
        want = regex.search(data)
        assert want is not None
        assert _next_marker(data, 0) == want.start()
    assert _next_marker(b"\xff\x00" * 5000, 0) == -1
