"""Official vs corrected gradient operator: train the decomposition stage with each, score both.

    .venv/bin/python scripts/compare_gradient.py --config configs/sice.yaml --steps 1500

Both runs share the seed, data, schedule and illumination-prior warm-up; only ``gradient`` differs. The
scores (``training.evaluate.decomposition_quality`` on the dev split) do not use either operator, so they
compare the two fairly. Runs go to ``runs/gradient-<variant>``; a finished run is scored without retraining.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kind_serve.model import KinD  # noqa: E402
from kind_serve.training.config import load_config  # noqa: E402
from kind_serve.training.data import ImageCache, load_pairs  # noqa: E402
from kind_serve.training.evaluate import decomposition_quality  # noqa: E402
from kind_serve.training.loop import train_stage  # noqa: E402
from kind_serve.training.runs import WEIGHTS, load_finished  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=Path("configs/sice.yaml"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--size", type=int, default=256, help="dev frames downscaled to this longer side")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    results = {}
    for variant in ("official", "corrected"):
        run = args.out / f"gradient-{variant}"
        cfg = load_config(
            args.config,
            [f"gradient={variant}", f"out={run}", f"stages.decom.steps={args.steps}", "eval_every=100000"],
        )
        if not (run / "decom" / WEIGHTS).is_file():
            train_stage(cfg, "decom", resume=(run / "decom").is_dir())
        kind = KinD()
        load_finished(kind, run, "decom")
        kind.eval()
        dev = load_pairs(cfg.data, cfg.data_format, "dev", cfg.pairs)
        results[variant] = decomposition_quality(kind, dev, ImageCache(), args.size)
        sys.stdout.write(f"{variant}: {json.dumps(results[variant])}\n")
    (args.out / "gradient-comparison.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
