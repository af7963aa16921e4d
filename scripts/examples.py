"""Before/after contact sheets of one or more bundles on the real low-light photos (for the model card).

    .venv/bin/python scripts/examples.py --checkpoint checkpoints/kind-sice --out out/examples
    .venv/bin/python scripts/examples.py --checkpoint old-bundle checkpoints/kind-sice --mode paper

Writes one PNG per set: each row is one photo, downscaled to 320 px — the input, then for each bundle its
output in each ``--mode`` (default: photo, then paper), all with automatic α. The outputs are generated
files: they are not committed (the inputs' research-only terms apply to them).
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
from kind_serve.model.image import from_tensor, to_tensor  # noqa: E402

SETS = {
    "phone": ["phone-exposures/101_0_.png", "phone-exposures/11_0_.png", "phone-exposures/1021_1_.png"],
    "lime": ["LIME/1.bmp", "LIME/3.bmp", "LIME/7.bmp"],
    "dicm": ["DICM/01.jpg", "DICM/04.jpg", "DICM/08.jpg", "DICM/10.jpg", "DICM/13.jpg", "DICM/22.jpg"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", nargs="+", default=["checkpoints/kind-sice"], help="one or more bundles")
    parser.add_argument("--mode", nargs="+", default=["photo", "paper"], choices=["photo", "paper"])
    parser.add_argument("--data", default="../shared/datasets/real-lowlight")
    parser.add_argument("--out", type=Path, default=Path("out/examples"))
    args = parser.parse_args()
    bundles = [KinD.load(path) for path in args.checkpoint]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, files in SETS.items():
        rows = []
        for rel in files:
            image = Image.open(Path(args.data) / rel).convert("RGB")
            image.thumbnail((320, 320))
            x = to_tensor(image)
            row = [x]
            for path, kind in zip(args.checkpoint, bundles, strict=True):
                for mode in args.mode:
                    out, alpha = kind.enhance_tensor(x, "auto", mode)
                    row.append(out)
                    sys.stdout.write(f"{rel} {path} {mode}: auto α = {alpha}\n")
            rows.append(torch.cat(row, dim=-1))
        width = max(r.shape[-1] for r in rows)
        sheet = torch.cat([F.pad(r, (0, width - r.shape[-1])) for r in rows], dim=-2)
        from_tensor(sheet).save(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
