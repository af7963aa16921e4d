"""Where the colour goes in dark frames: chroma and hue against the target after each step of the recipe.

    .venv/bin/python scripts/colour_budget.py --checkpoint checkpoints/kind-sice --pairs 12

On the dark benchmark's inputs (``kind eval --dark``: dev lows darkened behind a kept highlight, calibrated
noise), with the bundle's automatic α for photo mode, the output is rebuilt step by step: the decomposition's
own R under the adjusted illumination (no restoration), the restoration net's R̂ (paper mode), R̂ with the
authors' R^1.2 target undone, then photo mode's steps one at a time (grey mask and fusion with the input, the
gain limit, chroma noise reduction). Each row: mean chroma ratio (output chroma / target's, below 1 is washed
out), hue error (degrees) and GT-mean PSNR (exposure factored out), per level.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kind_serve.model import KinD  # noqa: E402
from kind_serve.model.compose import grey_mask, limit_gain, reduce_chroma_noise  # noqa: E402
from kind_serve.model.normalise import normalise  # noqa: E402
from kind_serve.model.recipe import choose_alpha  # noqa: E402
from kind_serve.training.config import load_config  # noqa: E402
from kind_serve.training.dark import LEVELS, SEED, dark_input, dark_metrics  # noqa: E402
from kind_serve.training.data import ImageCache, load_pairs  # noqa: E402
from kind_serve.training.evaluate import load_pair  # noqa: E402

Parts = dict[str, torch.Tensor]


def _photo(p: Parts, branch: torch.Tensor) -> torch.Tensor:
    weight = p["L"] * p["span"]
    return (weight * p["S"] + (1 - weight) * branch).clamp(0, 1)


STEPS: dict[str, Callable[[Parts], torch.Tensor]] = {
    "R·L̂ (no restoration)": lambda p: (p["R"] * p["L_hat"]).clamp(0, 1),
    "R̂·L̂ (paper)": lambda p: (p["R_hat"] * p["L_hat"]).clamp(0, 1),
    "R̂^(1/1.2)·L̂": lambda p: (p["R_hat"].clamp_min(0) ** (1 / 1.2) * p["L_hat"]).clamp(0, 1),
    "photo: mask + fusion": lambda p: _photo(p, p["R_hat"] * grey_mask(p["R"]) * p["L_hat"]),
    "  + gain limit": lambda p: _photo(
        p, limit_gain(p["R_hat"] * grey_mask(p["R"]) * p["L_hat"], p["S"], p["alpha"], p["span"])
    ),
    "  + chroma NR (photo)": lambda p: _photo(
        p, reduce_chroma_noise(limit_gain(p["R_hat"] * grey_mask(p["R"]) * p["L_hat"], p["S"], p["alpha"], p["span"]))
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="checkpoints/kind-sice")
    parser.add_argument("--data", default="../shared/datasets/sice-sequences")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    kind = KinD.load(args.checkpoint)
    pairs = load_pairs(args.data, "sice", "dev", load_config(None).pairs)[: args.pairs]
    cache = ImageCache()
    sums = {(step, level): np.zeros(3) for step in STEPS for level in LEVELS}
    with torch.inference_mode():
        for i, pair in enumerate(pairs):
            low, high = load_pair(cache, pair, args.size)
            for j, level in enumerate(LEVELS):
                dark = dark_input(low, level, np.random.default_rng([SEED, j, i]))
                s, span = normalise(dark)
                alpha = choose_alpha(kind, s, "photo", span)
                r, l = kind.decompose(s)
                parts = {"S": s, "span": span, "alpha": torch.tensor(alpha), "R": r, "L": l}
                parts |= {"R_hat": kind.restore(r, l), "L_hat": kind.adjust(l, alpha)}
                for step, build in STEPS.items():
                    m = dark_metrics(build(parts), high)
                    sums[step, level] += (m["chroma"], m["hue"], m["psnr_gt_mean"])
    n = len(pairs)
    head = " | ".join(f"{lv}: chroma / hue / GT-mean dB" for lv in LEVELS)
    lines = [f"| step ({n} dev pairs, {args.size} px) | {head} |", "|---|" + "---|" * len(LEVELS)]
    for step in STEPS:
        cells = [" / ".join(f"{v:.2f}" for v in sums[step, lv] / n) for lv in LEVELS]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
