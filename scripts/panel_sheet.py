"""The real-noise panel's visual sheet: 100 % crops of the darkest real photos through one or more bundles.

    .venv/bin/python scripts/panel_sheet.py --checkpoint OLD NEW --out out/panel-sheet.jpg

One row per photo (the first frame of each phone scene, and the DICM/LIME photos of the panel): the input
brightened linearly to the first bundle's output mean (its noise as the networks see it), that bundle in paper
mode, then each bundle in photo mode; automatic α. Each crop is ``--crop`` px square at 100 %, from the panel's
centre crop (training/panel.py), placed where the photo is darkest next to something lit, where holes, streaks
and smearing show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kind_serve.model import AUTO, KinD, recipe  # noqa: E402
from kind_serve.model.compose import luminance  # noqa: E402
from kind_serve.model.image import from_tensor  # noqa: E402
from kind_serve.training.panel import load, select  # noqa: E402


def crop_origin(image: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left of the ``size`` window that holds the most near-black pixels beside lit ones."""
    y = luminance(image)
    dark, lit = (y < 0.01).float(), (y > 0.1).float()
    near_lit = F.max_pool2d(lit, 33, stride=1, padding=16)
    score = F.avg_pool2d(dark * near_lit + 0.1 * dark, size, stride=8)
    h, w = score.shape[-2:]
    index = int(score.flatten().argmax())
    return min(index // w * 8, image.shape[-2] - size), min(index % w * 8, image.shape[-1] - size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", nargs="+", default=["checkpoints/kind-sice"])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/real-lowlight"))
    parser.add_argument("--out", type=Path, default=Path("out/panel-sheet.jpg"))
    parser.add_argument("--crop", type=int, default=256)
    args = parser.parse_args()
    kinds = [KinD.load(path) for path in args.checkpoint]
    scenes: set[str] = set()
    shots = []
    for shot in select(args.data):
        if shot.scene is None or shot.scene not in scenes:
            shots.append(shot)
            scenes.add(shot.scene or shot.name)
    size = args.crop
    columns = 2 + len(kinds)
    sheet = Image.new("RGB", (columns * size, len(shots) * (size + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, shot in enumerate(shots):
        image = load(args.data, shot.name)
        size_here = min(size, *image.shape[-2:])
        top, left = crop_origin(image, size_here)
        window = (..., slice(top, top + size_here), slice(left, left + size_here))
        outputs = []
        for i, kind in enumerate(kinds):
            modes = ["paper", "photo"] if i == 0 else ["photo"]
            parts = recipe.compute_parts(kind, image)  # the networks once, both modes from their parts
            for mode in modes:
                out, alpha = recipe.relight(kind, parts, AUTO, mode)
                outputs.append((out[window], f"{mode}, alpha {alpha:.1f}"))  # the default font has no α
        first = outputs[1][0]
        shown = (image[window] * (first.mean() / image[window].mean().clamp_min(1e-6))).clamp(0, 1)
        tiles = [(shown, f"{shot.name} (mean {shot.mean:.3f})"), *outputs]
        y0 = row * (size + 14)
        for col, (tile, label) in enumerate(tiles):
            sheet.paste(from_tensor(tile), (col * size, y0 + 14))
            draw.text((col * size + 2, y0 + 1), label[:40], fill="black")
        sys.stdout.write(f"{shot.name}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=90)
    sys.stdout.write(f"wrote {args.out} ({len(shots)} photos; columns: input, paper, then photo per bundle)\n")


if __name__ == "__main__":
    main()
