"""The fast path (``quality="fast"``, :mod:`model.multires`) against the full path: fidelity and time per megapixel.

    .venv/bin/python scripts/multires_check.py [--precision bf16] [--sigma 0.02] [--resize WxH] [--out DIR] PHOTO...

For each photo: the full path (``model.recipe.compute_parts`` then ``relight`` at the automatic α), then at the
same α the fast path (``compute_parts(..., quality="fast")``: the networks on S halved, their maps lifted back
with the input's detail, R̂'s weighted by the local noise level, σ₀ = ``--sigma``), and ``up``: the same
networks' maps only upsampled (no detail brought back), the baseline the detail has to beat.

Prints PSNR (dB) and SSIM of each to the full path's output, and each path's seconds per megapixel (parts and one
re-lighting); writes 100 % crops (full | up | fast, at the brightest-detail and darkest regions) under ``--out``.
Every image size takes the fast path here, the 2 MP floor aside. A measurement, not part of the service.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kind_serve.model import KinD, LightLevel, multires, recipe
from kind_serve.model.image import from_tensor, to_tensor
from kind_serve.model.parts import PARTS_DTYPE

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "kind-sice"


def upsampled(s: torch.Tensor, low: torch.Tensor, networks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``multires.lift`` without the detail: the networks' half-resolution maps, upsampled."""
    return out.copy_(F.interpolate(networks.float(), size=s.shape[-2:], mode="bilinear", align_corners=False))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def crops(arrays: list[np.ndarray], full: np.ndarray, side: int = 256) -> list[np.ndarray]:
    """Side-by-side 100 % crops at the most detailed bright region and at the darkest detailed region."""
    grey = full.mean(axis=2)
    h, w = grey.shape
    best, dark = None, None
    for top in range(0, h - side, side // 2):
        for left in range(0, w - side, side // 2):
            patch = grey[top : top + side, left : left + side]
            score = np.abs(np.diff(patch, axis=1)).mean()
            if best is None or score > best[0]:
                best = (score, top, left)
            dscore = score / (patch.mean() + 1)
            if patch.mean() < grey.mean() and (dark is None or dscore > dark[0]):
                dark = (dscore, top, left)
    rows = []
    for _, top, left in (best, dark):
        if _ is not None:
            rows.append(np.concatenate([a[top : top + side, left : left + side] for a in arrays], axis=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--sigma", type=float, default=multires.NOISE_SIGMA)
    parser.add_argument("--resize", default=None, help="WxH: resize each photo first (Lanczos)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "multires")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    multires.NOISE_SIGMA = args.sigma
    multires.FAST_MIN_PIXELS = 0
    kind = KinD.load(SHIPPED, device="cpu")
    recipe.enhance(kind, torch.rand(1, 3, 256, 256), precision=args.precision)  # first calls pay for set-up
    for path in args.photos:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if args.resize:
                rgb = rgb.resize(tuple(int(v) for v in args.resize.split("x")), Image.Resampling.LANCZOS)
        x = to_tensor(rgb)
        mp = x.shape[-2] * x.shape[-1] / 1e6
        start = time.perf_counter()
        parts = recipe.compute_parts(kind, x, precision=args.precision, dtype=PARTS_DTYPE)
        out_full, alpha = recipe.relight(kind, parts, precision=args.precision)
        full_s = time.perf_counter() - start
        del parts
        full = np.asarray(from_tensor(out_full))
        line = [f"{path.name} {x.shape[-1]}x{x.shape[-2]} alpha {alpha:.3g}: full {full_s / mp:.1f} s/MP"]
        shown = [full]
        for name, lifting in (("up", upsampled), ("fast", multires.lift)):
            recipe.lift = lifting
            start = time.perf_counter()
            parts = recipe.compute_parts(kind, x, precision=args.precision, dtype=PARTS_DTYPE, quality="fast")
            out, _ = recipe.relight(kind, parts, LightLevel(alpha), precision=args.precision)
            seconds = time.perf_counter() - start
            del parts
            arr = np.asarray(from_tensor(out))
            line.append(f"{name} {seconds / mp:.1f} s/MP PSNR {psnr(arr, full):.2f} SSIM {ssim(arr, full):.4f}")
            shown.append(arr)
        recipe.lift = multires.lift
        sys.stdout.write(" | ".join(line) + "\n")
        sys.stdout.flush()
        for i, row in enumerate(crops(shown, full)):
            Image.fromarray(row).save(args.out / f"{path.stem}-{args.resize or 'native'}-crop{i}.png")


if __name__ == "__main__":
    main()
