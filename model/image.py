"""Conversion between user images (PIL, NumPy) and the pipeline's float tensors, and the metadata kept.

Input policy: EXIF orientation applied; grey, palette and CMYK converted to RGB; an alpha channel is
dropped (the colour is kept, the transparency ignored); 16-bit and 32-bit images scaled to 8-bit.
HEIC/HEIF (phones' default) open through Pillow once this module is imported (``pillow-heif``); AVIF is
Pillow's own.

Metadata policy (:func:`read_metadata`): an RGB ICC profile and the EXIF block are carried to the output,
the EXIF orientation set to 1 because the pixels are already upright. A grey or CMYK profile is dropped: it
does not describe the RGB pixels the pipeline produces.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pillow_heif
import torch
from PIL import Image, ImageOps

pillow_heif.register_heif_opener()

ORIENTATION = 0x0112
EXIF_IFD = 0x8769
MAKER_NOTE = 0x927C
JPEG_EXIF_LIMIT = 65533  # one APP1 segment
_BAND_ROWS = 256  # rows of a float image converted to bytes at once (from_tensor)


@dataclass(frozen=True)
class Metadata:
    """What a written image carries over from its source: ICC profile and EXIF bytes (``None``: none)."""

    icc_profile: bytes | None = None
    exif: bytes | None = None

    def without_exif(self) -> Metadata:
        """The same without EXIF (camera, date, GPS): for sharing a photo without where it was taken."""
        return replace(self, exif=None)

    def save_params(self, fmt: str) -> dict[str, bytes]:
        """Keyword arguments for ``Image.save`` in ``fmt`` (``"png"``, ``"jpeg"`` or ``"webp"``)."""
        params = {}
        if self.icc_profile:
            params["icc_profile"] = self.icc_profile
        exif = self.exif
        if exif and fmt == "jpeg" and len(exif) > JPEG_EXIF_LIMIT:
            exif = _shrink_exif(exif)
        if exif:
            params["exif"] = exif
        return params


def _shrink_exif(raw: bytes) -> bytes | None:
    """EXIF without the maker note (vendor data, often tens of KB), or None if it still exceeds one JPEG segment."""
    exif = Image.Exif()
    exif.load(raw)
    exif.get_ifd(EXIF_IFD).pop(MAKER_NOTE, None)
    data = exif.tobytes()
    return data if len(data) <= JPEG_EXIF_LIMIT else None


def read_metadata(image: Image.Image) -> Metadata:
    """ICC profile and EXIF of an opened image (before :func:`to_rgb`), per the metadata policy above."""
    icc = image.info.get("icc_profile") or None
    if icc is not None and icc[16:20] != b"RGB ":  # the profile header's colour-space field
        icc = None
    # a PNG without an eXIf chunk before its pixels would be decoded in full by getexif(): read info only
    if image.format == "PNG" and "exif" not in image.info:
        return Metadata(icc, None)
    exif = image.getexif()
    if not exif:
        return Metadata(icc, None)
    if ORIENTATION in exif:
        exif[ORIENTATION] = 1
    return Metadata(icc, exif.tobytes())


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB version of any PIL image, following the policy above."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode != "RGB":
        image = image.convert("RGBA" if image.mode in ("P", "PA", "LA") else image.mode).convert("RGB")
    return image


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """1×3×H×W float32 in [0, 1] from a PIL image or a uint8 H×W×3 (or H×W) array."""
    if isinstance(image, Image.Image):
        arr = np.asarray(to_rgb(image))
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise TypeError(f"arrays must be uint8 (H×W×3 or H×W), got {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"arrays must be H×W×3 or H×W, got shape {arr.shape}")
    # np.array copies: PIL-backed arrays are read-only, which torch.from_numpy warns about
    return torch.from_numpy(np.array(arr, order="C")).permute(2, 0, 1)[None].float().div_(255)


def from_tensor(tensor: torch.Tensor) -> Image.Image:
    """PIL RGB image from a 1×3×H×W (or 3×H×W) float tensor in [0, 1]."""
    t = tensor[0] if tensor.dim() == 4 else tensor
    arr = torch.empty((*t.shape[-2:], 3), dtype=torch.uint8)
    # in bands of rows: a whole-image float temporary is four times the bytes it becomes
    for top in range(0, arr.shape[0], _BAND_ROWS):
        arr[top : top + _BAND_ROWS] = quantise(t[:, top : top + _BAND_ROWS])
    return Image.fromarray(arr.numpy(), "RGB")


def quantise(image: torch.Tensor) -> torch.Tensor:
    """h×w×C bytes of a C×h×w float image in [0, 1], rounded to the nearest of 256 levels (8-bit output)."""
    return image.cpu().float().clamp(0, 1).mul_(255).add_(0.5).to(torch.uint8).permute(1, 2, 0)
