"""Calibrate the dark-regime benchmark's noise against real low-light photos.

Noise σ is ``skimage.restoration.estimate_sigma`` after scaling each image to mean 0.4 (the brightness the
enhancer brings it to), on real photos (``real-lowlight``: DICM, LIME, phone exposures) and on the benchmark's
synthetic inputs (``training.dark``) at each level. Prints both distributions by input mean.

    .venv/bin/python scripts/dark_calibration.py --data ../shared/datasets [--pairs 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.restoration import estimate_sigma

from kind_serve.training.config import PairRules
from kind_serve.training.dark import LEVELS, dark_input
from kind_serve.training.data import ImageCache, load_pairs
from kind_serve.training.evaluate import load_pair


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def brightened_sigma(image: np.ndarray) -> float:
    scaled = np.clip(image * 0.4 / max(float(image.mean()), 1e-4), 0, 1)
    return float(estimate_sigma(scaled, channel_axis=-1, average_sigmas=True))


def _small(path: Path, side: int = 512) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side * 4, side * 4))
        w, h = im.size
        x, y = (w - min(w, side)) // 2, (h - min(h, side)) // 2
        return np.asarray(im.crop((x, y, x + min(w, side), y + min(h, side)))).astype(np.float32) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--pairs", type=int, default=12)
    args = parser.parse_args()

    real = sorted(p for p in (args.data / "real-lowlight").rglob("*") if p.suffix.lower() in (".jpg", ".bmp", ".png"))
    rows = [(float(im.mean()), brightened_sigma(im), p.parent.name) for p in real if (im := _small(p)) is not None]
    _say("real photos: input mean band → brightened σ (median, p90, n)")
    for lo, hi in ((0, 0.03), (0.03, 0.06), (0.06, 0.12), (0.12, 1)):
        sig = [s for m, s, _ in rows if lo <= m < hi]
        if sig:
            _say(f"  mean {lo:.2f}–{hi:.2f}: σ {np.median(sig):.3f}, p90 {np.percentile(sig, 90):.3f}, n={len(sig)}")

    pairs = load_pairs(args.data / "sice-sequences", "sice", "dev", PairRules())[: args.pairs]
    cache = ImageCache()
    _say("benchmark inputs: level → input mean, brightened σ (median, p90)")
    for j, level in enumerate(LEVELS):
        stats = []
        for i, pair in enumerate(pairs):
            low, _ = load_pair(cache, pair, None)
            dark = dark_input(low, level, np.random.default_rng([0, j, i]))[0].permute(1, 2, 0).numpy()
            stats.append((float(dark.mean()), brightened_sigma(dark)))
        means, sig = zip(*stats, strict=True)
        _say(f"  level {level}: mean {np.mean(means):.3f}, σ {np.median(sig):.3f}, p90 {np.percentile(sig, 90):.3f}")


if __name__ == "__main__":
    main()
