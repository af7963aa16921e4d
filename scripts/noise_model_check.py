"""The training noise model against real sensor noise: σ per signal level, blotch size, banding, colour share.

    .venv/bin/python scripts/noise_model_check.py --config configs/campaign.yaml

Real noise comes from the phone scenes of the real-noise panel (training/panel.py) whose four frames share one
exposure: the difference of two frames is noise (σ√2) plus a little motion, which pixels on an edge of the
frames' mean (5×5 gradient above 0.02) are left out to avoid. Synthetic noise is the config's ``noise`` model
(training/noise.py) applied to that mean, as training applies it to a SICE frame, minus the mean; ``--draws``
draws per scene (each draws its own sensor gain, blotch size and white balance). Per source:

- ``σ at L``: noise σ of the luminance (sRGB, [0, 1]) for pixels whose mean luminance lies in each bin;
- ``corr 1/2/4 px``: the noise's autocorrelation at those horizontal lags (0 for i.i.d. noise: blotches
  show as a slow fall);
- ``banding``: the row profile of the noise against what uncorrelated noise would give (≈ 1: none);
- ``colour``: the variance of the noise's chroma over its luma's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kind_serve.training.config import load_config  # noqa: E402
from kind_serve.training.noise import degrade  # noqa: E402
from kind_serve.training.panel import centre_crop, load, select  # noqa: E402

BINS = ((0.0, 0.01), (0.01, 0.03), (0.03, 0.1), (0.1, 0.3))
CROP = 512


def _luma(x: np.ndarray) -> np.ndarray:
    return 0.2125 * x[..., 0] + 0.7154 * x[..., 1] + 0.0721 * x[..., 2]


def figures(noise: np.ndarray, mean: np.ndarray, keep: np.ndarray, scale: float) -> dict[str, float]:
    """Statistics of an H×W×3 noise field (divided by ``scale``: √2 for a frame difference) over ``keep``."""
    y = _luma(noise) / scale
    level = _luma(mean)
    out: dict[str, float] = {}
    for lo, hi in BINS:
        where = keep & (level >= lo) & (level < hi)
        out[f"σ at {lo}–{hi}"] = float(y[where].std()) if where.sum() > 500 else float("nan")
    centred = np.where(keep, y - y[keep].mean(), 0.0)
    var = float((centred**2).sum())
    for lag in (1, 2, 4):
        both = keep[:, lag:] & keep[:, :-lag]
        out[f"corr {lag} px"] = float((centred[:, lag:] * centred[:, :-lag])[both].sum() / max(var, 1e-12))
    rows = np.array([r[k].mean() for r, k in zip(y, keep, strict=True) if k.sum() > 64])
    widths = np.array([k.sum() for k in keep if k.sum() > 64])
    out["banding"] = float(rows.std() / (y[keep].std() / np.sqrt(widths.mean())))
    chroma = noise - _luma(noise)[..., None]
    out["colour"] = float(chroma[keep].var() / max(float(_luma(noise)[keep].var()), 1e-12))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=Path("configs/campaign.yaml"))
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/real-lowlight"))
    parser.add_argument("--draws", type=int, default=4)
    args = parser.parse_args()
    noise_cfg = load_config(args.config).noise
    scenes: dict[str, list[str]] = {}
    for shot in select(args.data):
        if shot.scene is not None:
            scenes.setdefault(shot.scene, []).append(shot.name)
    real, synthetic = [], []
    for scene, names in sorted(scenes.items()):
        frames = [centre_crop(load(args.data, name), CROP)[0].permute(1, 2, 0).numpy() for name in names]
        means = [float(f.mean()) for f in frames]
        if len(frames) < 2 or max(means) > 1.1 * min(means):
            continue  # not one exposure
        mean = np.mean(frames, axis=0)
        y = torch.from_numpy(_luma(mean))[None, None]
        grad = (y - F.avg_pool2d(F.pad(y, (2, 2, 2, 2), mode="replicate"), 5, stride=1)).abs()[0, 0].numpy()
        keep = grad < 0.02
        real.append(figures(frames[0] - frames[1], mean, keep, np.sqrt(2)))
        for draw in range(args.draws):
            rng = np.random.default_rng([int(scene), draw])
            synthetic.append(figures(degrade(mean, rng, noise_cfg) - mean, mean, keep, 1.0))
        sys.stderr.write(f"scene {scene}: {len(frames)} frames\n")
    keys = list(real[0])
    lines = [f"| source | {' | '.join(keys)} |", "|---|" + "---|" * len(keys)]
    for label, rows in ((f"real ({len(real)} scenes)", real), (f"{args.config} ({len(synthetic)} draws)", synthetic)):
        cells = []
        for key in keys:
            values = np.array([r[key] for r in rows])
            values = values[~np.isnan(values)]
            if len(values) == 0:
                cells.append("—")
                continue
            lo, mid, hi = np.percentile(values, [10, 50, 90])
            cells.append(f"{mid:.4f} ({lo:.4f}–{hi:.4f})" if key.startswith("σ") else f"{mid:.2f} ({lo:.2f}–{hi:.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sys.stdout.write("medians (10th–90th percentile)\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
