"""``kind export BUNDLE --format onnx --out FILE``: a checkpoint bundle → one ONNX file (see docs/onnx.md).

The file is checked against the PyTorch pipeline in ONNX Runtime before the command succeeds (skip with
``--no-check``). Exit status 2 for an unusable bundle or a missing toolchain, 1 for a failed check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kind_serve.model import MODES, BundleError, KinD
from kind_serve.model.onnx_export import OPSET, ExportError, MissingToolchain, check_onnx, export_onnx


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kind export", description="Write a checkpoint bundle's pipeline as an ONNX file (docs/onnx.md)."
    )
    parser.add_argument("bundle", type=Path, help="checkpoint bundle folder")
    parser.add_argument("--format", required=True, choices=["onnx"], help="onnx (without it: a training run export)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="ONNX file to write")
    parser.add_argument("--mode", choices=MODES, help="output composition baked in (default: the bundle's)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the ONNX Runtime parity check")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv[1:] if argv and argv[0] == "export" else argv)
    try:
        kind = KinD.load(args.bundle)
        path = export_onnx(kind, args.out, mode=args.mode, opset=args.opset)
    except (BundleError, ExportError) as exc:
        sys.stderr.write(f"kind export: {exc}\n")
        return 2
    sys.stdout.write(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)\n")
    if args.check:
        try:
            worst = check_onnx(kind, path, mode=args.mode)
        except ExportError as exc:
            sys.stderr.write(f"kind export: {exc}\n")
            return 2 if isinstance(exc, MissingToolchain) else 1
        sys.stdout.write(f"ONNX Runtime matches PyTorch: max |diff| {worst:.1e}\n")
    return 0
