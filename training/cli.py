"""``kind train``, ``kind eval`` and ``kind export``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from kind_serve.model import AUTO, KinD, recipe

from .config import STAGES, load_config
from .dark import evaluate_dark
from .data import ImageCache, load_pairs
from .evaluate import evaluate, gamma_curve, identity, kind_method
from .export import export_run
from .loop import train_stage
from .panel import evaluate_panel


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kind")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train KinD stages")
    train.add_argument("stage", choices=[*STAGES, "all"])
    train.add_argument("--config", type=Path, help="YAML config (see configs/)")
    train.add_argument("--resume", action="store_true", help="continue from the stage's latest checkpoint")
    train.add_argument(
        "-o",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. -o stages.restore.steps=2000",
    )

    ev = sub.add_parser("eval", help="PSNR/SSIM of a bundle and baselines on a paired set")
    ev.add_argument("--checkpoint", required=True, type=Path, help="bundle directory")
    ev.add_argument("--data", default="../shared/datasets/sice-sequences")
    ev.add_argument("--format", dest="data_format", default="sice", choices=["sice", "lol"])
    ev.add_argument("--split", default="dev")
    ev.add_argument("--size", type=int, default=None, help="downscale so the longer side is at most N")
    ev.add_argument("--mode", default="paper", choices=["paper", "photo"])
    ev.add_argument("--config", type=Path, help="training config whose pair rules to use")
    ev.add_argument("--json", type=Path, help="also write the table as JSON here")
    ev.add_argument(
        "--dark",
        action="store_true",
        help="also run the dark-regime benchmark: dev lows darkened to means 0.04/0.02/0.01 behind a kept highlight",
    )
    ev.add_argument(
        "--panel",
        type=Path,
        nargs="?",
        const=Path("../shared/datasets/real-lowlight"),
        help="instead: the real-noise panel (training/panel.py) on the darkest photos of this folder",
    )
    ev.add_argument("--pairs", type=int, default=None, help="evaluate only the first N pairs")
    ev.add_argument("--device", default=None, help="torch device to run the bundle on, e.g. cuda (default: cpu)")

    ex = sub.add_parser("export", help="write the checkpoint bundle of a finished run")
    ex.add_argument("run", type=Path)
    ex.add_argument("--out", required=True, type=Path)
    ex.add_argument("--metrics", type=Path, help="JSON from kind eval --json to store in the manifest")
    ex.add_argument("--fp16", action="store_true", help="store weights as float16")
    ex.add_argument("--version", help="model version reported by the service (default: the run's folder name)")
    ex.add_argument(
        "--step", type=int, help="take a stage still training from its snapshot at this step (a dev check's)"
    )
    return parser


EVAL_COLUMNS = ["psnr", "ssim", "psnr_gt_mean", "ssim_gt_mean", "param", "pairs"]
DARK_COLUMNS = [
    "psnr",
    "ssim",
    "psnr_gt_mean",
    "exposure",
    "chroma",
    "hue",
    "texture",
    "border",
    "alpha",
    "input_mean",
    "pairs",
]


def _table(results: dict[str, dict[str, float]], cols: list[str] = EVAL_COLUMNS, label: str = "method") -> str:
    lines = [f"| {label} | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def _eval_dark(kind: KinD, pairs: list, args: argparse.Namespace) -> int:
    results = evaluate_dark({"kind (auto α)": kind_method(kind, "auto", args.mode)}, pairs, ImageCache(), args.size)
    table = _table(results["kind (auto α)"], DARK_COLUMNS, "level")
    sys.stdout.write(f"{args.split} dark regime: {len(pairs)} pairs, mode={args.mode}\n{table}\n")
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, "mode": args.mode, "dark": results}, indent=2))
    return 0


PANEL_COLUMNS = ["input_mean", "noise", "banding", "streaks", "holes", "chroma", "kept"]


def _eval_panel(kind: KinD, args: argparse.Namespace) -> int:
    def enhance(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = recipe.compute_parts(kind, image)  # the networks once, both modes from their parts
        return recipe.relight(kind, parts, AUTO, "photo")[0], recipe.relight(kind, parts, AUTO, "paper")[0]

    summary, rows = evaluate_panel(enhance, args.panel)
    lines = [f"real-noise panel: {summary.pop('photos')} photos of {args.panel}", _table(rows, PANEL_COLUMNS, "photo")]
    lines.append(_table({"median": summary}, [*PANEL_COLUMNS[1:], "holes_mean"], "summary"))
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"panel": str(args.panel), "summary": summary, "photos": rows}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        cfg = load_config(args.config, args.overrides)
        for stage in STAGES if args.stage == "all" else [args.stage]:
            train_stage(cfg, stage, resume=args.resume)
        return 0
    if args.command == "eval":
        cfg = load_config(args.config)
        kind = KinD.load(args.checkpoint, device=args.device)
        if args.panel is not None:
            return _eval_panel(kind, args)
        pairs = load_pairs(args.data, args.data_format, args.split, cfg.pairs)[: args.pairs]
        if args.dark:
            return _eval_dark(kind, pairs, args)
        methods = {
            "kind (auto α)": kind_method(kind, "auto", args.mode),
            "kind (oracle α, uses GT)": kind_method(kind, "oracle", args.mode),
            "identity": identity,
            "gamma (mean→0.45)": gamma_curve,
        }
        with torch.inference_mode():
            results = evaluate(methods, pairs, ImageCache(), args.size)
        sys.stdout.write(f"{args.split}: {len(pairs)} pairs, mode={args.mode}\n{_table(results)}\n")
        if args.json:
            args.json.write_text(json.dumps({"split": args.split, "mode": args.mode, "results": results}, indent=2))
        return 0
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    dtype = torch.float16 if args.fp16 else torch.float32
    out = export_run(args.run, args.out, metrics=metrics, version=args.version, dtype=dtype, step=args.step)
    sys.stdout.write(f"wrote {out}\n")
    return 0
