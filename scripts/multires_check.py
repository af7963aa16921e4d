"""A multi-resolution first enhancement against the full path (issue 24 part 3): fidelity and time per megapixel.

    .venv/bin/python scripts/multires_check.py [--factor 2] [--precision bf16] [--out out/multires] PHOTO...

For each photo: the full path (``model.recipe.compute_parts`` then ``relight`` at the automatic α), then the
reduced path at the same α: the decomposition and restoration run on S downscaled by ``--factor``
(antialiased), their maps are upsampled, and the input's own detail (S minus its upsampled low-resolution
version) is brought back into R and R̂ divided by the upsampled L (Retinex: S = R·L), in R̂ weighted by the
local noise level, measured as the local RMS of what the restoration removed (R − R̂ at low resolution):

- ``up``: no detail brought back (weight 0);
- ``detail``: all of it (weight 1);
- ``weighted``: weight 1 / (1 + (noise / σ₀)²), σ₀ = ``--sigma``.

Prints PSNR (dB) and SSIM of each variant's output to the full path's, and each path's seconds per megapixel
(parts and one re-lighting); writes 100 % crops (full | up | weighted, at the brightest-detail and darkest
regions) under ``--out``. Not part of the service: a measurement.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kind_serve.model import KinD, LightLevel  # noqa: E402
from kind_serve.model.auto_alpha import preview  # noqa: E402
from kind_serve.model.image import from_tensor, to_tensor  # noqa: E402
from kind_serve.model.normalise import normalise  # noqa: E402
from kind_serve.model.parts import PARTS_DTYPE, Parts, complete, parts_batch  # noqa: E402
from kind_serve.model.recipe import compute_parts, inference_context, relight  # noqa: E402
from kind_serve.model.tiling import tiled  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "kind-sice"


def box_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)


def reduced_parts(kind: KinD, image: torch.Tensor, factor: int, precision: str, sigma: float) -> dict[str, Parts]:
    """Parts of each variant from the networks run once on S downscaled by ``factor``."""
    tile, overlap = kind.defaults.tile_size, kind.defaults.tile_overlap
    with inference_context(kind.device, precision):
        s, captured = normalise(image.float())
        lo, small = float(image.amin()), preview(s)
        low = F.interpolate(s, scale_factor=1 / factor, mode="bilinear", antialias=True, align_corners=False)

        def run(batch: torch.Tensor) -> torch.Tensor:
            return parts_batch(kind, batch.to(memory_format=torch.channels_last)).float()

        maps_low = tiled(run, low, tile, overlap)  # R (3), L (1), R̂ (3)
    size = s.shape[-2:]

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    r_up, l_up, rh_up = up(maps_low[:, :3]), up(maps_low[:, 3:4]), up(maps_low[:, 4:7])
    detail = (s - up(low)) / l_up.clamp_min(0.02)
    removed = (maps_low[:, :3] - maps_low[:, 4:7]).square().mean(dim=1, keepdim=True)
    noise = up(box_blur(removed, 7).sqrt())
    weights = {
        "up": torch.zeros_like(noise),
        "detail": torch.ones_like(noise),
        "weighted": 1 / (1 + (noise / sigma) ** 2),
    }
    variants = {}
    for name, w in weights.items():
        maps = torch.empty((1, 11, *size), dtype=torch.float32)
        maps[:, :3] = s
        maps[:, 3:6] = (r_up + (0 if name == "up" else 1) * detail).clamp(0, 1)
        maps[:, 6:7] = l_up
        maps[:, 7:10] = (rh_up + w * detail).clamp(0, 1)
        parts = complete(maps, float(captured), lo, small)
        variants[name] = parts._replace(maps=parts.maps.to(PARTS_DTYPE))
    return variants


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
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--resize", default=None, help="WxH: resize each photo first (Lanczos)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "multires")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kind = KinD.load(SHIPPED, device="cpu")
    for path in args.photos:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if args.resize:
                rgb = rgb.resize(tuple(int(v) for v in args.resize.split("x")), Image.Resampling.LANCZOS)
        x = to_tensor(rgb)
        mp = x.shape[-2] * x.shape[-1] / 1e6
        start = time.perf_counter()
        parts = compute_parts(kind, x, precision=args.precision, dtype=PARTS_DTYPE)
        out_full, alpha = relight(kind, parts, precision=args.precision)
        full_s = time.perf_counter() - start
        del parts
        start = time.perf_counter()
        variants = reduced_parts(kind, x, args.factor, args.precision, args.sigma)
        reduced_s = time.perf_counter() - start  # the three variants share the networks' run
        full = np.asarray(from_tensor(out_full))
        line = [f"{path.name} {x.shape[-1]}x{x.shape[-2]} alpha {alpha:.3g}: full {full_s / mp:.1f} s/MP"]
        shown = [full]
        for name, vparts in variants.items():
            start = time.perf_counter()
            out, _ = relight(kind, vparts, LightLevel(alpha), precision=args.precision)
            relit_s = time.perf_counter() - start
            arr = np.asarray(from_tensor(out))
            line.append(
                f"{name} {(reduced_s + relit_s) / mp:.1f} s/MP PSNR {psnr(arr, full):.2f} SSIM {ssim(arr, full):.4f}"
            )
            if name in ("up", "weighted"):
                shown.append(arr)
        sys.stdout.write(" | ".join(line) + "\n")
        sys.stdout.flush()
        for i, row in enumerate(crops(shown, full)):
            Image.fromarray(row).save(args.out / f"{path.stem}-{args.resize or 'native'}-crop{i}.png")


if __name__ == "__main__":
    main()
