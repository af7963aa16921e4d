"""Phone-sized test photos shared by the tests and the benchmarks: one real exposure, resized to any size."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# a real 3840×2160 phone exposure (../shared, beside the repository; CI has it too)
PHONE_EXPOSURE = Path(__file__).resolve().parents[2] / "shared/datasets/real-lowlight/phone-exposures/11_0_.png"


def phone_photo(width: int, height: int) -> bytes:
    """:data:`PHONE_EXPOSURE` resized to width×height (Lanczos) as a q90 JPEG; a synthetic dark scene without it."""
    if PHONE_EXPOSURE.exists():
        with Image.open(PHONE_EXPOSURE) as im:
            image = im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = 20 + 25 * np.sin(xx / 300) * np.cos(yy / 200)
        noisy = base[..., None] + rng.normal(0, 4, (height, width, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()
