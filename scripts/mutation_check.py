#!/usr/bin/env python3
"""Mutation check: plant each known-plausible bug, one at a time, and see whether the tests catch it.

Each mutation is a textual patch to one source file (exact text in, replacement out). The working tree is
copied once (tracked and untracked-but-not-ignored files, as ``git ls-files`` lists them) to a temporary
folder; every mutation is applied there, the tests meant to catch it run there, and the file is restored in
a ``finally``. The repository itself is never modified. A mutation whose text is no longer in the source
is reported as ``stale`` (the code moved: update its patch below), never silently skipped.

    .venv/bin/python scripts/mutation_check.py            # all mutations (a few minutes on 2 cores)
    .venv/bin/python scripts/mutation_check.py --list
    .venv/bin/python scripts/mutation_check.py fsync-file worker-first-alpha

Exit status 0 when every mutation is killed and the unmutated baseline passes. The table is printed
as Markdown, ready for ``docs/testing.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1800  # per pytest run; a loaded 2-core machine is slow

RECIPE = "tests/model/test_model_recipe.py"
PARITY = "tests/service/test_service_parity.py"
SEAMS = f"{RECIPE}::test_tiled_output_matches_the_whole_image_without_seams"
ALIGNED = f"{RECIPE}::test_output_is_aligned_with_the_input"
SPECKLE = f"{RECIPE}::test_photo_mode_removes_the_colour_speckle_that_paper_mode_keeps"
CAST = f"{RECIPE}::test_a_colour_cast_survives_the_normalisation"
MIXED_ALPHA = f"{PARITY}::test_a_batch_of_mixed_light_levels_gives_each_request_its_own"
LOSSES = "tests/training/test_losses_reference.py"
CHECKPOINT = "tests/training/test_checkpoint_durability.py"
THREADS = "tests/service/test_service_threads.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    edits: tuple[tuple[str, str], ...]  # (exact text, replacement), each must occur exactly once
    tests: tuple[str, ...]
    what: str


def _drop(path: str, name: str, text: str, tests: tuple[str, ...], what: str) -> Mutation:
    return Mutation(name, path, ((text, ""),), tests, what)


MUTATIONS = (
    Mutation(
        "worker-first-alpha",
        "service/worker.py",
        (
            (
                "out = adjust(model, x, recipe.alpha_tensor(_fixed(levels), self.device), key.scale)",
                "out = adjust(model, x, recipe.alpha_tensor(_fixed(levels)[:1] * len(levels), self.device), key.scale)",
            ),
        ),
        (MIXED_ALPHA,),
        "the worker applies the first item's α to every item of a batch",
    ),
    Mutation(
        "tiles-flat-weights",
        "model/tiling.py",
        (("            w[:r] = edge\n", "            w[:r] = 1\n"), ("w[n - r :] = edge.flip(0)", "w[n - r :] = 1")),
        (SEAMS,),
        "tiles blended with flat weights",
    ),
    Mutation(
        "tiles-overwrite",
        "model/tiling.py",
        (
            (
                "self.canvas[..., ys, xs] += tile.float().cpu() * (wy[:, None] * wx[None, :])",
                "self.canvas[..., ys, xs] = tile.float().cpu()",
            ),
        ),
        (SEAMS,),
        "each tile overwrites its neighbours (no blending)",
    ),
    _drop(
        "model/compose.py",
        "photo-no-chroma-nr",
        "    brightened = reduce_chroma_noise(brightened)\n",
        (SPECKLE,),
        "photo mode skips its chroma noise reduction",
    ),
    Mutation(
        "pad-top-left",
        "model/tiling.py",
        (("(0, -w % multiple, 0, -h % multiple)", "(-w % multiple, 0, -h % multiple, 0)"),),
        (ALIGNED, PARITY),
        "network inputs padded at the top/left instead of the bottom/right",
    ),
    Mutation(
        "service-own-canvas",
        "service/inference.py",
        (("on_canvas(s, win, multiple)", "on_canvas(s, win, 2 * multiple)"),),
        (PARITY,),
        "the service pads to its own size bucket, not to the library's canvas",
    ),
    Mutation(
        "per-channel-normalisation",
        "model/normalise.py",
        (
            ("x.amin(dim=(1, 2, 3), keepdim=True)", "x.amin(dim=(2, 3), keepdim=True)"),
            ("x.amax(dim=(1, 2, 3), keepdim=True)", "x.amax(dim=(2, 3), keepdim=True)"),
        ),
        (CAST,),
        "min-max stretch per channel instead of over the whole image",
    ),
    _drop(
        "training/losses.py",
        "decom-drop-recon-low",
        "(r_low * l_low - s_low).abs().mean() + ",
        (LOSSES,),
        "decomposition loss without the low-light reconstruction term",
    ),
    _drop(
        "training/losses.py",
        "decom-drop-recon-high",
        " + (r_high * l_high - s_high).abs().mean()",
        (LOSSES,),
        "decomposition loss without the normal-light reconstruction term",
    ),
    _drop(
        "training/losses.py",
        "decom-drop-reflectance",
        "        + reflectance_weight * reflectance\n",
        (LOSSES,),
        "decomposition loss without the reflectance consistency term",
    ),
    _drop(
        "training/losses.py",
        "decom-drop-mutual",
        "        + 0.2 * mutual_consistency(l_low, l_high, official)\n",
        (LOSSES,),
        "decomposition loss without the mutual consistency term",
    ),
    _drop(
        "training/losses.py",
        "decom-drop-smooth-high",
        "        + 0.15 * smoothness(l_high, s_high, official)\n",
        (LOSSES,),
        "decomposition loss without the normal-light smoothness term",
    ),
    _drop(
        "training/losses.py",
        "decom-drop-smooth-low",
        "        + 0.15 * smoothness(l_low, s_low, official)\n",
        (LOSSES,),
        "decomposition loss without the low-light smoothness term",
    ),
    _drop(
        "training/losses.py",
        "adjust-drop-mse",
        "return ((adjusted - target) ** 2).mean() + ",
        (LOSSES,),
        "adjustment loss without its MSE term",
    ),
    _drop(
        "training/losses.py",
        "adjust-drop-gradient",
        " + _grad_mse(adjusted, target, official)",
        (LOSSES,),
        "adjustment loss without its gradient term",
    ),
    _drop(
        "training/losses.py",
        "restore-drop-mse",
        "((restored - target) ** 2).mean() + ",
        (LOSSES,),
        "restoration loss without its MSE term",
    ),
    _drop(
        "training/losses.py",
        "restore-drop-ssim",
        " + structural",
        (LOSSES,),
        "restoration loss without its SSIM term",
    ),
    _drop(
        "training/losses.py",
        "restore-drop-gradient",
        " + _grad_mse(gray(restored), gray(target), official)",
        (LOSSES,),
        "restoration loss without its gradient term",
    ),
    _drop(
        "service/worker.py",
        "helpers-multithreaded",
        "    torch.set_num_threads(1)\n",
        (THREADS,),
        "the event loop's helper threads keep an OpenMP team of their own beside the workers'",
    ),
    _drop(
        "service/worker.py",
        "worker-count-overwritten",
        "        torch.get_num_threads()\n",
        (THREADS,),
        "the worker's thread count is overwritten by torch's first call in its thread (it runs on one)",
    ),
    _drop(
        "training/checkpoint.py",
        "fsync-file",
        "        os.fsync(f.fileno())\n",
        (CHECKPOINT,),
        "checkpoint renamed into place without fsyncing its data",
    ),
    Mutation(
        "fsync-directory",
        "training/checkpoint.py",
        (("        os.fsync(fd)\n", "        pass\n"),),
        (CHECKPOINT,),
        "rename not made durable (directory not fsynced)",
    ),
)


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored), without .git or the venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = Path(os.fsdecode(raw))
        src = REPO / rel
        if src.is_file():  # deleted-but-tracked files are listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    # kind_serve.* from the copy (its own package-path links), not from the editable install of this checkout
    links = subprocess.run(["bash", "scripts/package-path.sh"], cwd=tree, check=True, capture_output=True, text=True)
    path = os.pathsep.join((links.stdout.strip(), str(tree)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - start, f"timed out after {TIMEOUT_S} s"
    return proc.returncode, time.perf_counter() - start, proc.stdout + proc.stderr


def apply(tree: Path, mutation: Mutation) -> str | None:
    """Patch the copy; the original text, or None when a patch no longer matches (stale)."""
    path = tree / mutation.path
    if not path.is_file():
        return None
    original = path.read_text()
    text = original
    for old, new in mutation.edits:
        if text.count(old) != 1:
            return None
        text = text.replace(old, new)
    path.write_text(text)
    return original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    if args.list or not chosen:
        for m in MUTATIONS:
            say(f"{m.name:28} {m.path:24} {m.what}")
        return 0 if args.list else 2

    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="kind-mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        suites = sorted({t for m in chosen for t in m.tests})
        rc, seconds, out = run_tests(tree, tuple(suites))
        say(f"baseline ({' '.join(suites)}): {'pass' if rc == 0 else 'FAIL'} in {seconds:.0f} s")
        if rc != 0:
            say(out[-3000:])
            return 1
        for m in chosen:
            original = apply(tree, m)
            if original is None:
                rows.append((m, "stale", 0.0))
                ok = False
                say(f"{m.name}: stale (the patched text is not in {m.path} exactly once)")
                continue
            try:
                rc, seconds, out = run_tests(tree, m.tests)
            finally:
                (tree / m.path).write_text(original)
            # pytest: 1 = tests failed (killed); 0 = passed (survived); anything else = could not run
            verdict = {0: "SURVIVED", 1: "killed", -1: "timed out"}.get(rc, f"error (pytest exit {rc})")
            ok = ok and rc == 1
            rows.append((m, verdict, seconds))
            say(f"{m.name}: {verdict} in {seconds:.0f} s")
            if rc not in (0, 1):
                say(out[-2000:])

    say()
    say("| mutation | file | planted bug | tests run | result |")
    say("|---|---|---|---|---|")
    for m, verdict, seconds in rows:
        tests = ", ".join(Path(t).name for t in m.tests)
        say(f"| `{m.name}` | `{m.path}` | {m.what} | {tests} | {verdict} ({seconds:.0f} s) |")
    killed = sum(v == "killed" for _, v, _ in rows)
    say(f"\n{killed}/{len(rows)} killed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
