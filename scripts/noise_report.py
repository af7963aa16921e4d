"""Noise left in the default output on noisy real phone shots: one number per bundle, lower is cleaner.

    .venv/bin/python scripts/noise_report.py --checkpoint OLD NEW

For each shot (full resolution, photo mode, automatic α): the standard deviation of what a 5×5 box blur removes
from the output's luminance and from its colour differences. The shots are smooth indoor scenes, so this is
mostly noise (and a little texture); compare bundles with it, not absolute values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kind_serve.model import KinD  # noqa: E402
from kind_serve.model.compose import luminance  # noqa: E402
from kind_serve.model.image import to_tensor  # noqa: E402

SHOTS = ["11_0_", "101_0_", "147_0_", "744_2_", "893_0_"]


def high_pass(x: torch.Tensor) -> float:
    return float((x - F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)).std())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", nargs="+", default=["checkpoints/kind-sice"])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/real-lowlight/phone-exposures"))
    args = parser.parse_args()
    for path in args.checkpoint:
        kind = KinD.load(path)
        luma, chroma = [], []
        for shot in SHOTS:
            x = to_tensor(Image.open(args.data / f"{shot}.png").convert("RGB"))
            with torch.inference_mode():
                out, _ = kind.enhance_tensor(x, "auto", "photo")
            y = luminance(out)
            luma.append(high_pass(y))
            chroma.append(high_pass(out - y))
        per_shot = " ".join(f"{s} {v:.4f}" for s, v in zip(SHOTS, luma, strict=True))
        sys.stdout.write(
            f"{path}: luminance {sum(luma) / len(luma):.4f} ({per_shot}); colour {sum(chroma) / len(chroma):.4f}\n"
        )


if __name__ == "__main__":
    main()
