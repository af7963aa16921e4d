"""PSNR of reduced-precision output against fp32 on real photos (the ≥ 40 dB rule for adopting a precision).

OMP_NUM_THREADS=1 .venv/bin/python scripts/precision_check.py --precision bf16 [--photos 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kind_serve.model import KinD, recipe  # noqa: E402
from kind_serve.model.light import LightLevel  # noqa: E402
from kind_serve.training.evaluate import psnr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="checkpoints/kind-sice")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/real-lowlight/DICM"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    kind = KinD.load(args.checkpoint)
    for path in sorted(args.data.glob("*.jpg"))[: args.photos]:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((400, 400))
            x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255
        for mode in ("photo", "paper"):
            ref, _ = recipe.enhance(kind, x, LightLevel.parse("auto"), mode, precision="fp32")
            low, _ = recipe.enhance(kind, x, LightLevel.parse("auto"), mode, precision=args.precision)
            diff = float(((ref.clamp(0, 1) - low.clamp(0, 1)).abs() * 255).round().max())
            sys.stdout.write(f"{path.name} {mode}: {psnr(low, ref.clamp(0, 1)):.1f} dB, max {diff:.0f}/255\n")


if __name__ == "__main__":
    main()
