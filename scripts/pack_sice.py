"""Pack the SICE frames that training and evaluation use into a small folder that travels without ../shared.

A GPU machine receives only the working tree and the ignored paths named in the device tool's ``carry`` (64 MiB
in all); ``../shared`` stays behind. This copies the frames that the pair rules of ``--config`` pick for the
train and dev splits — byte for byte, so nothing is re-encoded — with the ``scenes.csv``/``alignment.csv``
rows of those frames, into ``--out`` (the SICE layout, read by ``data_format: sice``). After writing it checks
that the pack yields exactly the original pairs and that it fits in ``--max-mib``.

Frames the target pairing never uses are left out, so ``pairs: exposures`` on a pack sees fewer pairs.

    .venv/bin/python scripts/pack_sice.py --config configs/gpu.yaml   # → .carry/sice-pack (about 21 MiB)
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from kind_serve.training.config import load_config
from kind_serve.training.data import Pair, load_pairs

SPLITS = ("train", "dev")
CSVS = ("scenes.csv", "alignment.csv")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def _key(path: Path) -> tuple[str, int]:
    return path.parent.name, int(path.stem)


def pairs_by_split(root: Path, config: Path | None) -> dict[str, list[Pair]]:
    rules = load_config(config).pairs
    return {split: load_pairs(root, "sice", split, rules) for split in SPLITS}


def _copy_rows(src: Path, dst: Path, keep: set[tuple[str, int]]) -> int:
    with src.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if (r["scene_id"], int(r["k"])) in keep]
        fields = reader.fieldnames
    if fields is None:
        raise ValueError(f"{src}: empty CSV")
    with dst.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def pack(source: Path, out: Path, config: Path | None, max_mib: float) -> dict[str, object]:
    """Write the pack; returns its summary (also written as ``out/PACK.json``)."""
    for name in CSVS:
        if not (source / name).is_file():
            raise SystemExit(f"{source / name} is missing: --data must be a sice-sequences folder")
    original = pairs_by_split(source, config)
    frames = sorted({p for pairs in original.values() for pair in pairs for p in (pair.low, pair.high)})
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for frame in frames:
        (out / frame.parent.name).mkdir(exist_ok=True)
        shutil.copyfile(frame, out / frame.parent.name / frame.name)
    keep = {_key(f) for f in frames}
    rows = {name: _copy_rows(source / name, out / name, keep) for name in CSVS}

    packed = pairs_by_split(out, config)
    for split in SPLITS:
        before = [(_key(p.low), _key(p.high)) for p in original[split]]
        after = [(_key(p.low), _key(p.high)) for p in packed[split]]
        if before != after:
            raise SystemExit(f"the pack's {split} pairs differ from the source's: {len(after)} vs {len(before)}")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    summary: dict[str, object] = {
        "source": str(source),
        "config": str(config) if config else "defaults",
        "pairs": {split: len(pairs) for split, pairs in original.items()},
        "frames": len(frames),
        "rows": rows,
        "mib": round(total / 2**20, 2),
    }
    (out / "PACK.json").write_text(json.dumps(summary, indent=2) + "\n")
    if total > max_mib * 2**20:
        raise SystemExit(f"{out}: {total / 2**20:.1f} MiB, over the {max_mib} MiB limit")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/sice-sequences"))
    parser.add_argument("--config", type=Path, help="training config whose pair rules pick the frames")
    parser.add_argument("--out", type=Path, default=Path(".carry/sice-pack"))
    parser.add_argument("--max-mib", type=float, default=45.0)
    args = parser.parse_args()
    summary = pack(args.data, args.out, args.config, args.max_mib)
    _say(f"wrote {args.out}: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
