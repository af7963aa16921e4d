"""Conversion between user images (PIL, NumPy) and the pipeline's float tensors.

Input policy: EXIF orientation applied; grey, palette and CMYK converted to RGB; an alpha channel is
dropped (the colour is kept, the transparency ignored); 16-bit and 32-bit images scaled to 8-bit.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps


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
    arr = t.clamp(0, 1).mul(255).add_(0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")
