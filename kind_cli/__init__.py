"""The ``kind`` command: dispatches to the package that owns each subcommand.

Imports are lazy so that an install with only one extra (serve or train) still runs its own commands.
"""

from __future__ import annotations

import sys

USAGE = """usage: kind COMMAND [ARGS...]

commands:
  enhance     enhance images or folders of images          (model)
  decompose   write reflectance and illumination images     (model)
  serve       start the HTTP service                        (service, needs the 'serve' extra)
  train       train KinD stages                             (training, needs the 'train' extra)
  eval        evaluate a bundle on a paired dataset         (training)
  export      turn a training run into a checkpoint bundle  (training)
  export BUNDLE --format onnx --out FILE
              a bundle as one ONNX file                     (model, needs the 'onnx' extra)

Run 'kind COMMAND --help' for a command's options."""


def _wants_onnx(args: list[str]) -> bool:
    """``--format onnx`` (or ``--format=onnx``) among ``kind export``'s arguments."""
    for i, arg in enumerate(args):
        if arg == "--format":
            return args[i + 1 : i + 2] == ["onnx"]
        if arg.startswith("--format="):
            return arg == "--format=onnx"
    return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n")
        return 0
    command, rest = args[0], args[1:]
    if command in ("enhance", "decompose"):
        from .images import main as run
    elif command == "export" and _wants_onnx(rest):
        from .export_onnx import main as run
    elif command == "serve":
        from kind_serve.service.__main__ import main as run
    elif command in ("train", "eval", "export"):
        from kind_serve.training.cli import main as run
    else:
        sys.stderr.write(f"kind: unknown command {command!r}\n\n{USAGE}\n")
        return 2
    return int(run([command, *rest]) or 0)
