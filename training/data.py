"""Paired low/normal-light data: multi-exposure sequences (SICE layout) and the LOL layout.

Sampling is a pure function of (seed, step, rank): no iterator state, so a resumed run draws exactly the
batches it would have drawn, and ranks of a distributed run draw disjoint shards of each epoch.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import NoiseConfig, PairRules
from .noise import darken, degrade, exposure_factor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """The dataset is missing files or does not have the expected layout."""


@dataclass(frozen=True)
class Pair:
    low: Path
    high: Path
    scene: str


@dataclass(frozen=True)
class Frame:
    scene: str
    k: int
    mean: float
    clipped: float
    status: str
    split: str


def read_sice_frames(root: Path) -> dict[str, list[Frame]]:
    """Frames per scene from ``scenes.csv`` and ``alignment.csv``, darkest first."""
    status = {(r["scene_id"], int(r["k"])): r["status"] for r in csv.DictReader((root / "alignment.csv").open())}
    scenes: dict[str, list[Frame]] = defaultdict(list)
    for r in csv.DictReader((root / "scenes.csv").open()):
        key = (r["scene_id"], int(r["k"]))
        scenes[r["scene_id"]].append(
            Frame(
                key[0],
                key[1],
                float(r["mean_intensity"]),
                float(r["clipped_fraction"]),
                status.get(key, "ok"),
                r["split"],
            )
        )
    return {s: sorted(f, key=lambda fr: fr.k) for s, f in scenes.items()}


def choose_target(frames: list[Frame], rules: PairRules) -> Frame | None:
    """The normal-light frame: closest to ``target_mean`` among unclipped, aligned frames."""
    aligned = [f for f in frames if f.status in ("ok", "ref")]
    clean = [f for f in aligned if f.clipped <= rules.max_clipped]
    if not clean:
        clean = [min(aligned, key=lambda f: f.clipped)] if aligned else []
        clean = [f for f in clean if f.clipped <= rules.fallback_clipped]
    best = min(clean, key=lambda f: abs(f.mean - rules.target_mean)) if clean else None
    return best if best is not None and best.mean >= rules.min_target_mean else None


def sice_pairs(root: str | Path, split: str, rules: PairRules) -> list[Pair]:
    """(low, target) pairs of every scene in ``split`` under ``rules``."""
    root = Path(root)
    pairs = []
    for scene, frames in sorted(read_sice_frames(root).items()):
        if frames[0].split != split:
            continue
        target = choose_target(frames, rules)
        if target is None:
            continue
        for f in frames:
            usable = not (rules.exclude_misaligned and f.status == "misaligned")
            if usable and rules.min_low_mean <= f.mean <= rules.max_low_ratio * target.mean:
                pairs.append(Pair(root / scene / f"{f.k}.jpg", root / scene / f"{target.k}.jpg", scene))
    missing = [str(p) for pair in pairs for p in (pair.low, pair.high) if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} frames listed in scenes.csv are missing, e.g. {missing[0]}")
    return pairs


def exposure_pairs(root: str | Path, split: str, rules: PairRules) -> list[Pair]:
    """Every (darker, brighter) pair of a scene's usable frames whose means differ by ``max_low_ratio`` or more.

    Usable: aligned (unless ``exclude_misaligned`` is off), mean ≥ ``min_low_mean``, and — for the brighter
    frame — at most ``fallback_clipped`` clipped pixels. Scenes are those :func:`sice_pairs` keeps.
    """
    root = Path(root)
    pairs = []
    for scene, frames in sorted(read_sice_frames(root).items()):
        if frames[0].split != split or choose_target(frames, rules) is None:
            continue
        usable = [
            f
            for f in frames
            if not (rules.exclude_misaligned and f.status == "misaligned") and f.mean >= rules.min_low_mean
        ]
        for low in usable:
            for high in usable:
                if high.clipped <= rules.fallback_clipped and low.mean <= rules.max_low_ratio * high.mean:
                    pairs.append(Pair(root / scene / f"{low.k}.jpg", root / scene / f"{high.k}.jpg", scene))
    return pairs


def lol_pairs(root: str | Path, split: str) -> list[Pair]:
    """LOL pairs matched by file name (``our485`` = train, ``eval15`` = dev); a mismatch is an error."""
    folder = Path(root) / ("our485" if split == "train" else "eval15")
    names = {}
    for side in ("low", "high"):
        d = folder / side
        if not d.is_dir():
            raise DataError(f"{d}: missing; LOL layout is our485|eval15/{{low,high}}")
        names[side] = {p.name for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    only_low = sorted(names["low"] - names["high"])
    only_high = sorted(names["high"] - names["low"])
    if only_low or only_high:
        raise DataError(f"{folder}: unpaired files: low only {only_low}, high only {only_high}")
    return [Pair(folder / "low" / n, folder / "high" / n, Path(n).stem) for n in sorted(names["low"])]


def load_pairs(root: str | Path, data_format: str, split: str, rules: PairRules, pairing: str = "target") -> list[Pair]:
    """The (low, high) pairs of ``split``; ``pairing`` "exposures" takes any two exposures (SICE only)."""
    if pairing not in ("target", "exposures"):
        raise ValueError(f"pairs must be 'target' or 'exposures', got {pairing!r}")
    if data_format == "sice":
        pairs = (exposure_pairs if pairing == "exposures" else sice_pairs)(root, split, rules)
    elif data_format == "lol":  # two exposures per scene: both pairings are the same
        pairs = lol_pairs(root, split)
    else:
        raise ValueError(f"data_format must be 'sice' or 'lol', got {data_format!r}")
    if not pairs:
        raise DataError(f"no {split} pairs found in {root} with the current pair rules")
    return pairs


class ImageCache:
    """Decoded uint8 H×W×3 frames, loaded once (2,000 SICE frames take 1.6 GB), with their min/max."""

    def __init__(self) -> None:
        self._images: dict[Path, tuple[np.ndarray, float, float]] = {}

    def __getitem__(self, path: Path) -> tuple[np.ndarray, float, float]:
        if path not in self._images:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
            self._images[path] = (arr, float(arr.min()) / 255, float(arr.max()) / 255)
        return self._images[path]


def batch_indices(n: int, step: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Indices of ``rank``'s share of global batch ``step``: epochs are seeded permutations, sharded by rank."""
    out = []
    for i in range(batch):
        position = (step * world + rank) * batch + i
        epoch, offset = divmod(position, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[offset]))
    return out


class StepBatches(torch.utils.data.Dataset):
    """Batch ``step`` of a stage as one dataset item, so that DataLoader workers can draw batches in parallel.

    An item is ``(S_low, S_high, rng state)``: the state of the step's generator after sampling, which the
    stage's loss continues from (the adjustment stage draws its directions from it). The batches are those
    :func:`sample_batch` draws in the training process, with or without workers.
    """

    def __init__(
        self,
        pairs: list[Pair],
        batch: int,
        patch: int,
        noise: NoiseConfig | None,
        seed: int,
        stage_index: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.pairs, self.batch, self.patch, self.noise = pairs, batch, patch, noise
        self.seed, self.stage_index, self.rank, self.world = seed, stage_index, rank, world
        self.cache = ImageCache()

    def generator(self, step: int, *extra: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stage_index, step, self.rank, *extra])

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, Mapping[str, Any]]:
        rng = self.generator(step)
        indices = batch_indices(len(self.pairs), step, self.batch, self.seed + self.stage_index, self.rank, self.world)
        low, high = sample_batch(self.pairs, self.cache, indices, self.patch, rng, self.noise)
        return low, high, rng.bit_generator.state


def iterate_batches(
    batches: StepBatches, steps: range, workers: int = 0, pin_memory: bool = False, repeat: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.random.Generator]]:
    """(S_low, S_high, generator) for each step in order; ``workers`` > 0 draws them in that many processes.

    ``repeat`` > 1 draws one batch per ``repeat`` steps (batch ``step // repeat``: consecutive batches, so every
    epoch still visits every pair) and turns it by a different flip/rotation for each of those steps, whose
    generators are then their own: for a GPU that its data workers cannot keep busy.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    sources = range(steps.start // repeat, -(-steps.stop // repeat))
    if workers <= 0:
        items: Iterable = (batches[source] for source in sources)
    else:
        items = torch.utils.data.DataLoader(
            batches,
            batch_size=None,
            sampler=sources,
            num_workers=workers,
            pin_memory=pin_memory,
        )
    for source, (low, high, state) in zip(sources, items, strict=True):
        for step in range(source * repeat, (source + 1) * repeat):
            if step not in steps:
                continue
            turn = step % repeat
            if turn == 0:
                rng = np.random.default_rng()
                rng.bit_generator.state = state
            else:
                rng = batches.generator(step, turn)
            yield _turn(low, turn), _turn(high, turn), rng


def _turn(batch: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of an N×C×H×W batch (k = 0: unchanged)."""
    if k >= 4:
        batch = batch.flip(-1)
    return torch.rot90(batch, k % 4, dims=(-2, -1)) if k % 4 else batch


def dihedral(arr: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of an H×W×C array."""
    if k >= 4:
        arr = arr[:, ::-1]
    return np.rot90(arr, k % 4)


def sample_batch(
    pairs: list[Pair],
    cache: ImageCache,
    indices: list[int],
    patch: int,
    rng: np.random.Generator,
    noise: NoiseConfig | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (S_low, S_high), N×3×patch×patch: same crop and flip on both; noise on low only.

    Each crop is stretched with its whole frame's min/max, as the authors normalise whole images
    (``noise.stretch: degraded`` also counts the noisy crop's own extremes, as inference sees them).
    """
    lows, highs = [], []
    for idx in indices:
        (low, low_min, low_max), (high, high_min, high_max) = cache[pairs[idx].low], cache[pairs[idx].high]
        h, w = min(low.shape[0], high.shape[0]), min(low.shape[1], high.shape[1])
        p = min(patch, h, w)
        y, x, k = rng.integers(0, h - p + 1), rng.integers(0, w - p + 1), int(rng.integers(0, 8))
        lo = low[y : y + p, x : x + p].astype(np.float32) / 255
        hi = high[y : y + p, x : x + p].astype(np.float32) / 255
        if noise is not None and noise.enabled and rng.random() < noise.probability:
            lo, low_min, low_max = _degrade(lo, low_min, low_max, rng, noise)
        # the geometric augmentation comes after the noise, so sensor rows (banding) end up in any orientation
        lo, hi = dihedral(lo, k), dihedral(hi, k)
        lows.append(np.clip((lo - low_min) / max(low_max - low_min, 0.001), 0, 1))
        highs.append((hi - high_min) / max(high_max - high_min, 0.001))
    return _to_tensor(lows), _to_tensor(highs)


def _degrade(
    lo: np.ndarray, low_min: float, low_max: float, rng: np.random.Generator, noise: NoiseConfig
) -> tuple[np.ndarray, float, float]:
    """The noisy, possibly darker crop and the min/max its whole frame is stretched with."""
    exposure = exposure_factor(rng, noise)
    if exposure < 1:
        keep = noise.keep_highlight_probability > 0 and rng.random() < noise.keep_highlight_probability
        lo = darken(lo, exposure)
        # the frame's min/max darken too (the stretch undoes the darkening) unless a highlight kept its level
        low_min = float(darken(low_min, exposure))
        low_max = low_max if keep else float(darken(low_max, exposure))
    lo = degrade(lo, rng, noise)
    if noise.stretch == "degraded":
        low_min, low_max = min(low_min, float(lo.min())), max(low_max, float(lo.max()))
    return lo, low_min, low_max


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
