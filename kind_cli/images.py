"""``kind enhance`` and ``kind decompose``: arguments, input files, checkpoint choice and output files.

The image work itself is :mod:`model.recipe`'s; the light level is parsed once, from ``--alpha``, into a
:class:`model.LightLevel` (``kind enhance`` also takes a comma-separated bracket, every level composed from
one run of the networks: :func:`model.recipe.compute_parts`, then :func:`model.recipe.relight`), and the
tile size is checked once against the bundle's overlap with :func:`model.check_tiling`. Inputs are files and folders (a folder contributes its PNG, JPEG, WebP, BMP, TIFF, HEIC and AVIF files, not recursing).
The enhanced PNG keeps the input's colour profile and EXIF (orientation 1) unless ``--strip-metadata``.
An input that cannot be read is reported with the reason and skipped; the command exits with status 1
after processing the rest. Usage and checkpoint errors exit with status 2 before any work is done.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import torch
from PIL import Image
from tqdm import tqdm

from kind_serve.model import (
    AUTO,
    MODES,
    AlphaError,
    BundleError,
    KinD,
    LightLevel,
    OfficialWeightsError,
    TilingError,
    recipe,
)
from kind_serve.model.cpu import retain_freed_memory
from kind_serve.model.image import Metadata, from_tensor, read_metadata, to_tensor
from kind_serve.model.multires import QUALITIES
from kind_serve.model.parts import PARTS_DTYPE
from kind_serve.model.precision import SETTINGS as PRECISION_SETTINGS
from kind_serve.model.precision import choose_precision
from kind_serve.model.tiling import MIN_TILE, check_tiling

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO_ROOT / "checkpoints" / "kind-sice"
DEFAULT_OFFICIAL = REPO_ROOT / "checkpoints" / "official-kind"  # where to put the authors' kind_*.npz files
OFFICIAL_PREFIX = "official:"
EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"})
# Pillow raises SyntaxError for some malformed files (e.g. broken PNG chunks) besides OSError/ValueError
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class CheckpointError(RuntimeError):
    """No usable checkpoint for the CLI."""


# -- arguments ----------------------------------------------------------------------------------------
def _alpha(value: str) -> LightLevel:
    try:
        return LightLevel.parse(value)
    except AlphaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _alphas(value: str) -> list[LightLevel]:
    """One light level, or a bracket of them separated by commas (``2,4,8``; repeats dropped)."""
    levels = [_alpha(part.strip()) for part in value.split(",") if part.strip()]
    if not levels:
        raise argparse.ArgumentTypeError("alpha must be 'auto', a number, or numbers separated by commas")
    return list(dict.fromkeys(levels))


def _tile(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tile size must be an integer, got {value!r}") from None
    if size < MIN_TILE:
        raise argparse.ArgumentTypeError(f"tile size must be at least {MIN_TILE} pixels, got {size}")
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kind", description="KinD low-light image enhancement.")
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    common.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    common.add_argument(
        "--checkpoint",
        metavar="PATH",
        help=f"checkpoint bundle folder, or {OFFICIAL_PREFIX}DIR for the authors' npz weights "
        f"(default: {DEFAULT_BUNDLE}, else the official weights in {DEFAULT_OFFICIAL})",
    )
    common.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if present")
    common.add_argument(
        "--tile-size", type=_tile, metavar="N", help="tiles of at most N² pixels (default: the bundle's)"
    )
    common.add_argument(
        "--precision",
        default="auto",
        choices=PRECISION_SETTINGS,
        help="autocast precision (default auto: bf16 on CPUs with bf16 instructions, fp16 on tensor-core GPUs, "
        "else fp32; pass fp32 for output bit-comparable with the fp32 library)",
    )
    common.add_argument(
        "--quiet", action="store_true", help="no progress bars (they are off anyway when stderr is not a terminal)"
    )

    enhance = commands.add_parser("enhance", parents=[common], help="enhance images; writes DIR/<stem>.png")
    enhance.add_argument(
        "--alpha",
        type=_alphas,
        default=[AUTO],
        metavar="auto|FLOAT[,FLOAT...]",
        help="light level (auto); several, comma-separated, write a bracket <stem>_alpha<α>.png from one run of "
        "the decomposition and restoration",
    )
    enhance.add_argument("--mode", choices=MODES, help="output composition (default: the bundle's)")
    enhance.add_argument(
        "--quality",
        choices=QUALITIES,
        default="full",
        help="fast: on images above 2 MP the networks run at half resolution, 2-3x faster with softer fine "
        "texture (docs/performance.md); full (default): at full resolution",
    )
    enhance.add_argument(
        "--strip-metadata",
        action="store_true",
        help="write no EXIF (camera, date, GPS); by default the input's EXIF and colour profile are kept",
    )

    decompose = commands.add_parser(
        "decompose", parents=[common], help="write <stem>_R.png and <stem>_L.png (and <stem>_L_adj.png with --alpha)"
    )
    decompose.add_argument("--alpha", type=_alpha, default=None, metavar="auto|FLOAT", help="also write L adjusted")
    return parser


# -- model and inputs ---------------------------------------------------------------------------------
def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _fail(command: str, message: str) -> NoReturn:
    """Exit 2 with the reason alone: a usage line would not help with a checkpoint or device problem."""
    sys.stderr.write(f"kind {command}: error: {message}\n")
    raise SystemExit(2)


class TileBar:
    """A per-image progress bar over its tiles, shown once the image turns out to be tiled (a ``Progress``)."""

    def __init__(self, name: str, disable: bool | None) -> None:
        self.name = name
        self.disable = disable
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if total <= 1:
            return
        if self.bar is None:
            self.bar = tqdm(
                total=total, desc=self.name, unit="tile", leave=False, file=sys.stderr, disable=self.disable
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda was asked for, but PyTorch sees no CUDA device (use --device cpu)")
    return torch.device(name)


def _official(directory: Path) -> KinD:
    kind = KinD.from_official(decom=directory / "kind_decom.npz", illum=directory / "kind_illum.npz")
    _say(
        f"WARNING: using the authors' official weights from {directory}. The restoration net is UNTRAINED "
        "(the authors never released it), so colours and noise in the output are not KinD's; "
        "pass --checkpoint with a trained bundle for real results."
    )
    return kind


def load_model(spec: str | None) -> KinD:
    """The KinD for ``--checkpoint`` (a bundle, ``official:DIR``, or the default bundle/official fallback)."""
    try:
        if spec is not None and spec.startswith(OFFICIAL_PREFIX):
            return _official(Path(spec[len(OFFICIAL_PREFIX) :]))
        if spec is not None:
            kind = KinD.load(spec)
        elif (DEFAULT_BUNDLE / "manifest.json").is_file():
            kind = KinD.load(DEFAULT_BUNDLE)
        elif (DEFAULT_OFFICIAL / "kind_decom.npz").is_file():
            _say(f"WARNING: no checkpoint bundle at {DEFAULT_BUNDLE}; falling back to the official weights.")
            return _official(DEFAULT_OFFICIAL)
        else:
            raise CheckpointError(
                f"no checkpoint: neither a bundle at {DEFAULT_BUNDLE} nor official weights in {DEFAULT_OFFICIAL}; "
                "pass --checkpoint PATH"
            )
    except (BundleError, OfficialWeightsError, FileNotFoundError) as exc:
        raise CheckpointError(str(exc)) from exc
    if kind.version == "untrained":  # KinD()'s default version: weights saved straight from initialisation
        _say(f"WARNING: checkpoint {kind.version!r} holds randomly initialised networks; the output is meaningless.")
    elif not kind.restoration_trained:
        _say(f"WARNING: checkpoint {kind.version!r} has an UNTRAINED restoration net; output colours are not KinD's.")
    return kind


def collect_inputs(paths: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files to process (folders expanded, sorted) and messages for inputs that do not exist."""
    files: list[Path] = []
    missing: list[str] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(f"{name}: no such file or folder")
    return files, missing


def read_image(path: Path) -> torch.Tensor:
    """1×3×H×W float in [0, 1], upright (EXIF), RGB per :mod:`model.image`'s policy."""
    with Image.open(path) as image:
        image.load()
        return to_tensor(image)


def read_image_metadata(path: Path) -> Metadata:
    """The ICC profile and EXIF (orientation 1) that the enhanced image carries over (:mod:`model.image`)."""
    with Image.open(path) as image:
        return read_metadata(image)


def _save(image: Image.Image, path: Path, meta: Metadata | None = None) -> None:
    # write then rename, so an interrupted run never leaves a half-written PNG behind
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", **(meta.save_params("png") if meta else {}))
    tmp.replace(path)


# -- commands -----------------------------------------------------------------------------------------
def _enhance_one(kind: KinD, x: torch.Tensor, args: argparse.Namespace, source: Path, progress: TileBar) -> str:
    meta = read_image_metadata(source)
    meta = meta.without_exif() if args.strip_metadata else meta
    levels: list[LightLevel] = args.alpha
    # the networks once, then only the adjustment and the composition per light level; one level keeps
    # float32 parts, so its output is exactly KinD.enhance's
    parts = recipe.compute_parts(
        kind,
        x,
        tile_size=args.tile_size,
        precision=args.precision,
        progress=progress,
        dtype=torch.float32 if len(levels) == 1 else PARTS_DTYPE,
        quality=args.quality,
    )
    written = []
    for level in levels:
        out, used = recipe.relight(kind, parts, level, args.mode, tile_size=args.tile_size, precision=args.precision)
        suffix = "" if len(levels) == 1 else f"_alpha{'auto' if level.auto else f'{used:g}'}"
        dest = args.out / f"{source.stem}{suffix}.png"
        _save(from_tensor(out), dest, meta)
        written.append(f"{dest} (alpha={used:.3f}{', auto' if level.auto else ''})")
    return ", ".join(written)


def _grey(t: torch.Tensor) -> Image.Image:
    return from_tensor(t.expand(-1, 3, -1, -1)).convert("L")


def _decompose_one(kind: KinD, x: torch.Tensor, args: argparse.Namespace, source: Path, progress: TileBar) -> str:
    stem = source.stem
    r, l, l_adj, used = recipe.decompose(
        kind, x, args.alpha, tile_size=args.tile_size, precision=args.precision, progress=progress
    )
    _save(from_tensor(r), args.out / f"{stem}_R.png")
    _save(_grey(l), args.out / f"{stem}_L.png")
    written = f"{args.out / stem}_R.png, _L.png"
    if l_adj is not None:
        _save(_grey(l_adj), args.out / f"{stem}_L_adj.png")
        written += f", _L_adj.png (alpha={used:.3f})"
    return written


def main(argv: list[str] | None = None) -> int:
    """Run ``kind enhance|decompose ...``; returns the exit status (0 ok, 1 some inputs failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        if device.type == "cpu":
            retain_freed_memory()
        kind = load_model(args.checkpoint).prepare(device)
        choice = choose_precision(args.precision, device)
        if choice.warning:
            _say(f"warning: {choice.warning}")
        args.precision = choice.precision
    except CheckpointError as exc:
        _fail(args.command, str(exc))
    if args.tile_size is not None:
        try:
            check_tiling(args.tile_size, kind.defaults.tile_overlap)
        except TilingError as exc:
            _fail(args.command, f"--tile-size: {exc}")
    files, failures = collect_inputs(args.inputs)
    for message in failures:
        _say(f"error: {message}")
    if not files:
        _say("error: no images to process")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    process = _enhance_one if args.command == "enhance" else _decompose_one
    produced: dict[str, Path] = {}
    bars = True if args.quiet else None  # tqdm: None turns bars off when stderr is not a terminal
    for path in tqdm(files, desc=args.command, unit="img", file=sys.stderr, disable=True if len(files) == 1 else bars):
        if path.stem in produced:
            failures.append(f"{path}: skipped, its output name clashes with {produced[path.stem]}")
            _say(f"error: {failures[-1]}")
            continue
        try:
            x = read_image(path)
        except READ_ERRORS as exc:
            failures.append(f"{path}: cannot read image ({type(exc).__name__}: {exc})")
            _say(f"error: {failures[-1]}")
            continue
        bar = TileBar(path.name, bars)
        try:
            written = process(kind, x, args, path, bar)
        except (RuntimeError, OSError) as exc:  # e.g. out of memory, disk full: report, go on with the rest
            failures.append(f"{path}: failed ({type(exc).__name__}: {exc})")
            _say(f"error: {failures[-1]}")
            continue
        finally:
            bar.close()
        produced[path.stem] = path
        tqdm.write(f"{path} -> {written}", file=sys.stdout)
    _say(f"{len(produced)} written to {args.out}, {len(failures)} failed")
    for message in failures:
        _say(f"  failed: {message}")
    return 1 if failures else 0
