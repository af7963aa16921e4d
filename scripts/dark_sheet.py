"""Visual sheet of the dark-regime benchmark: the same darkened dev inputs through one or more bundles.

    .venv/bin/python scripts/dark_sheet.py --checkpoint checkpoints/kind-sice runs/new-bundle --out sheet.png

Each row is one dev pair at one level of ``kind eval --dark`` (``training/dark.py``: darkened behind a kept
highlight, calibrated noise, seeded as the benchmark seeds it): the input brightened ×8 for viewing, each
bundle's photo-mode output with automatic α (its α and PSNR written on it), then the normal-light target. The
sheet is a generated file: do not commit it (the dev scenes' terms apply).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kind_serve.model import AUTO, KinD, recipe  # noqa: E402
from kind_serve.training.config import load_config  # noqa: E402
from kind_serve.training.dark import LEVELS, SEED, dark_input  # noqa: E402
from kind_serve.training.data import ImageCache, load_pairs  # noqa: E402
from kind_serve.training.evaluate import load_pair, psnr  # noqa: E402

ROWS = ((2, 0.01), (10, 0.01), (30, 0.02), (44, 0.01), (20, 0.04))  # (dev pair index, input mean)


def tile(image: torch.Tensor, label: str) -> np.ndarray:
    im = Image.fromarray((image[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    ImageDraw.Draw(im).text((4, 4), label, fill=(255, 64, 64))
    return np.asarray(im)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", nargs="+", default=["checkpoints/kind-sice"])
    parser.add_argument("--data", default="../shared/datasets/sice-sequences")
    parser.add_argument("--size", type=int, default=256, help="longer side of the frames, as kind eval --size")
    parser.add_argument("--out", type=Path, default=Path("dark-sheet.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundles = [(path, KinD.load(path)) for path in args.checkpoint]
    pairs = load_pairs(args.data, "sice", "dev", load_config(None).pairs)
    cache = ImageCache()
    rows = []
    for index, level in ROWS:
        low, high = load_pair(cache, pairs[index], args.size)
        dark = dark_input(low, level, np.random.default_rng([SEED, LEVELS.index(level), index]))
        tiles = [tile(dark * 8, f"input x8, mean {level}")]
        for path, kind in bundles:
            out, alpha = recipe.enhance(kind, dark, AUTO, "photo", tile_size=args.size)
            tiles.append(tile(out, f"{Path(path).name} a={alpha:.1f} {psnr(out, high):.1f} dB"))
        tiles.append(tile(high, "target"))
        rows.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    sys.stdout.write(f"wrote {args.out}\n")


if __name__ == "__main__":
    main()
