"""Before/after contact sheets of a bundle on the real low-light photos (for the model card).

    .venv/bin/python scripts/examples.py --checkpoint checkpoints/kind-sice --out out/examples

Writes one PNG per set (input | photo mode, auto α | paper mode, auto α), each photo downscaled to 320 px.
The outputs are generated files: they are not committed (the inputs' research-only terms apply to them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import KinD  # noqa: E402
from model.image import from_tensor, to_tensor  # noqa: E402

SETS = {
    "phone": ["phone-exposures/101_0_.png", "phone-exposures/11_0_.png", "phone-exposures/1021_1_.png"],
    "lime": ["LIME/1.bmp", "LIME/3.bmp", "LIME/7.bmp"],
    "dicm": ["DICM/01.jpg", "DICM/04.jpg", "DICM/10.jpg", "DICM/22.jpg"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="checkpoints/kind-sice")
    parser.add_argument("--data", default="../shared/datasets/real-lowlight")
    parser.add_argument("--out", type=Path, default=Path("out/examples"))
    args = parser.parse_args()
    kind = KinD.load(args.checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, files in SETS.items():
        rows = []
        for rel in files:
            image = Image.open(Path(args.data) / rel).convert("RGB")
            image.thumbnail((320, 320))
            x = to_tensor(image)
            photo, alpha = kind.enhance_tensor(x, "auto", "photo")
            paper, _ = kind.enhance_tensor(x, "auto", "paper")
            rows.append(torch.cat([x, photo, paper], dim=-1))
            sys.stdout.write(f"{rel}: auto α = {alpha}\n")
        width = max(r.shape[-1] for r in rows)
        sheet = torch.cat([F.pad(r, (0, width - r.shape[-1])) for r in rows], dim=-2)
        from_tensor(sheet).save(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
