"""The real-noise panel: the darkest real photos we have, scored without a reference.

The dev pairs carry synthetic noise only (SICE's downscale and JPEG removed the sensor's), so they cannot tell
whether the networks handle real noise. This panel takes every photo of ``real-lowlight`` (DICM, LIME and the
phone frames) whose mean is below :data:`MAX_MEAN`, the centre :data:`CROP`×:data:`CROP` of each at 100 %
(smaller photos whole), enhances it with automatic α in both modes, and measures per photo:

- ``noise``: ``skimage.restoration.estimate_sigma`` of the photo-mode output's luminance (residual noise);
- ``banding``: streaks along rows or columns. The high-pass luminance (minus a 5×5 box blur) is averaged along
  each row and each column; the larger of the two profiles' standard deviations is divided by what
  uncorrelated noise of the same σ would give (σ / √length): about 1 for no streaks, far above for lines;
- ``streaks``: the same larger profile's standard deviation itself, in luminance units: the streaks'
  amplitude, which ``banding`` scores relative to the output's own noise (a cleaner output with the same
  streaks has a higher ``banding``, the same ``streaks``);
- ``holes``: near-black holes next to lit areas, photo against paper mode: the share of pixels within
  :data:`LIT_REACH` px of a lit one (photo luminance > 0.3) where photo mode is below a quarter of paper mode's
  luminance while paper mode shows something (> 0.05);
- ``chroma``: colourfulness kept: the output's mean chroma over its mean luma, divided by the same ratio of the
  input after a 9×9 box blur (which takes most of the chroma noise away): below 1 is desaturated.

The phone frames come four to a scene, at the same brightness, differing by noise (and slight motion). Per
scene, ``kept``: the mean over pixels of the frames' standard deviation after enhancement, over the same for
the inputs scaled to the outputs' mean: the share of the frame-to-frame noise the output keeps (lower is
cleaner; texture and motion are common to both).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kind_serve.model.compose import luminance
from kind_serve.model.image import to_tensor

from .dark import luma_chroma

MAX_MEAN = 0.05  # input mean (RGB, [0, 1]) below which a photo is in the panel
CROP = 1024  # px: the centre crop of larger photos, at 100 %
LIT_REACH = 32  # px: how near a lit pixel a hole must be to count
FOLDERS = ("DICM", "LIME", "phone-exposures")
_SCENE = re.compile(r"^(\d+)_\d+_$")  # phone frames: <scene>_<k>_.png

# raw 1×3×H×W input → (photo-mode output, paper-mode output), each 1×3×H×W in [0, 1]
Enhancer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Shot:
    """One panel photo: its name under the data folder, the phone scene it belongs to (if any), its input mean."""

    name: str
    scene: str | None
    mean: float


def centre_crop(image: torch.Tensor, size: int = CROP) -> torch.Tensor:
    """The centre ``size``×``size`` (at most) of an N×C×H×W image, at 100 %."""
    h, w = image.shape[-2:]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return image[..., top : top + min(h, size), left : left + min(w, size)]


def load(root: Path, name: str) -> torch.Tensor:
    """The panel's 1×3×H×W input for ``name``: the photo's centre crop, RGB in [0, 1]."""
    with Image.open(root / name) as image:
        return centre_crop(to_tensor(image.convert("RGB")))


def select(root: Path, max_mean: float = MAX_MEAN) -> list[Shot]:
    """The photos of ``root``'s :data:`FOLDERS` whose centre crop's mean is below ``max_mean``, sorted by name."""
    shots = []
    for folder in FOLDERS:
        for path in sorted((root / folder).glob("*")):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp"):
                continue
            name = f"{folder}/{path.name}"
            mean = float(load(root, name).mean())
            if mean < max_mean:
                match = _SCENE.match(path.stem) if folder == "phone-exposures" else None
                shots.append(Shot(name, match.group(1) if match else None, round(mean, 4)))
    return shots


def _box(x: torch.Tensor, size: int) -> torch.Tensor:
    pad = size // 2
    return F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), size, stride=1)


def residual_noise(output: torch.Tensor) -> float:
    """σ of the noise left in the output's luminance (``skimage.restoration.estimate_sigma``)."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(luminance(output)[0, 0].numpy().astype(np.float64)))


def _line_profiles(output: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """The high-pass luminance, and the standard deviations of its row means and of its column means."""
    y = luminance(output)[0, 0]
    high = y - _box(y[None, None], 5)[0, 0]
    return high, float(high.mean(dim=1).std()), float(high.mean(dim=0).std())


def banding(output: torch.Tensor) -> float:
    """Streaks: the row (or column) profile of the high-pass luminance against uncorrelated noise's (≈ 1)."""
    high, rows, cols = _line_profiles(output)
    sigma = float(high.std()) + 1e-9
    return max(rows / (sigma / high.shape[1] ** 0.5), cols / (sigma / high.shape[0] ** 0.5))


def streaks(output: torch.Tensor) -> float:
    """Streaks' amplitude in luminance units: the larger of the two profiles' standard deviations. Unlike
    :func:`banding` it does not grow when the output's other noise falls."""
    _, rows, cols = _line_profiles(output)
    return max(rows, cols)


def holes(photo: torch.Tensor, paper: torch.Tensor) -> float:
    """Share of pixels near a lit one where photo mode is a hole (< ¼ of paper mode, which shows > 0.05)."""
    y_photo, y_paper = luminance(photo), luminance(paper)
    near_lit = F.max_pool2d((y_photo > 0.3).float(), 2 * LIT_REACH + 1, stride=1, padding=LIT_REACH) > 0
    hole = (y_photo < 0.25 * y_paper) & (y_paper > 0.05) & near_lit
    return float(hole.float().mean())


def chroma_kept(output: torch.Tensor, image: torch.Tensor) -> float:
    """The output's chroma per unit luma over the (box-blurred) input's: below 1 is washed out."""
    y_out, c_out = luma_chroma(output)
    y_in, c_in = luma_chroma(_box(image, 9))
    ratio_in = float(c_in.mean()) / max(float(y_in.mean()), 1e-6)
    return float(c_out.mean()) / max(float(y_out.mean()), 1e-6) / max(ratio_in, 1e-6)


def noise_kept(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """Frame-to-frame σ of the outputs over that of the inputs scaled to the outputs' mean (one scene)."""
    x, y = torch.cat(inputs), torch.cat(outputs)
    x = x * (y.mean() / x.mean().clamp_min(1e-6))
    return float(y.std(dim=0).mean() / x.std(dim=0).mean().clamp_min(1e-9))


def _same_exposure(frames: list[torch.Tensor], tolerance: float = 0.1) -> bool:
    """Two or more frames whose means agree within ``tolerance`` (one phone scene's frames do not)."""
    means = [float(frame.mean()) for frame in frames]
    return len(means) > 1 and max(means) <= (1 + tolerance) * min(means)


@torch.inference_mode()
def evaluate_panel(
    enhance: Enhancer, root: Path, shots: list[Shot] | None = None
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(summary, per-photo figures). The summary holds the medians of the per-photo figures and ``kept``, the
    median over the phone scenes with two or more frames in the panel whose means agree within 10 %."""
    shots = select(root) if shots is None else shots
    rows: dict[str, dict[str, float]] = {}
    frames: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for shot in shots:
        image = load(root, shot.name)
        photo, paper = enhance(image)
        rows[shot.name] = {
            "input_mean": shot.mean,
            "noise": round(residual_noise(photo), 5),
            "banding": round(banding(photo), 3),
            "streaks": round(streaks(photo), 6),
            "holes": round(holes(photo, paper), 5),
            "chroma": round(chroma_kept(photo, image), 3),
        }
        if shot.scene is not None:
            inputs, outputs = frames.setdefault(shot.scene, ([], []))
            inputs.append(image)
            outputs.append(photo)
    kept = {scene: noise_kept(*pair) for scene, pair in frames.items() if _same_exposure(pair[0])}
    for scene, value in kept.items():
        rows[f"phone-exposures/{scene} (scene)"] = {"kept": round(value, 4)}
    per_photo = [row for row in rows.values() if "noise" in row]
    summary = {
        key: round(median(row[key] for row in per_photo), 5)
        for key in ("noise", "banding", "streaks", "holes", "chroma")
    }
    summary["holes_mean"] = round(sum(row["holes"] for row in per_photo) / max(len(per_photo), 1), 5)
    if kept:
        summary["kept"] = round(median(kept.values()), 4)
    summary["photos"] = len(per_photo)
    return summary, rows
