from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.restoration import estimate_sigma

from kind_serve.training.config import NoiseConfig, PairRules, load_config
from kind_serve.training.data import (
    DataError,
    ImageCache,
    Pair,
    batch_indices,
    load_pairs,
    lol_pairs,
    sample_batch,
    sice_pairs,
)
from kind_serve.training.noise import degrade, exposure_factor, unit_noise
from tests.conftest import SHARED, require_shared

SHARED_SICE = SHARED / "datasets" / "sice-sequences"


def test_config_overrides_and_unknown_keys() -> None:
    cfg = load_config(overrides=["stages.restore.steps=7", "noise.enabled=false", "pairs.max_clipped=0.1"])
    assert cfg.stages["restore"].steps == 7 and not cfg.noise.enabled and cfg.pairs.max_clipped == 0.1
    with pytest.raises(ValueError, match="unknown key 'stepz'"):
        load_config(overrides=["stages.restore.stepz=7"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(overrides=["seed"])


def test_sice_pairs_follow_the_rules(tiny_sice: Path) -> None:
    rules = PairRules(target_mean=0.25, max_low_ratio=0.6, min_target_mean=0.1)
    pairs = sice_pairs(tiny_sice, "train", rules)
    assert pairs, "the tiny dataset must yield pairs"
    for p in pairs:
        low, high = (np.asarray(Image.open(f)).mean() / 255 for f in (p.low, p.high))
        assert low <= 0.6 * high + 1e-3
    assert {p.scene for p in pairs}.isdisjoint({p.scene for p in sice_pairs(tiny_sice, "dev", rules)})


def test_exposure_pairs_take_any_darker_brighter_pair_of_a_scene(tiny_sice: Path) -> None:
    rules = PairRules(target_mean=0.25, max_low_ratio=0.6, min_target_mean=0.1)
    targets = load_pairs(tiny_sice, "sice", "train", rules)
    exposures = load_pairs(tiny_sice, "sice", "train", rules, pairing="exposures")
    assert set(targets) < set(exposures), "every target pair, plus pairs ending at other brightnesses"
    assert len({p.high for p in exposures}) > len({p.high for p in targets})
    for p in exposures:
        assert p.low.parent == p.high.parent
        low, high = (np.asarray(Image.open(f)).mean() / 255 for f in (p.low, p.high))
        assert low <= 0.6 * high + 1e-3
    with pytest.raises(ValueError, match="pairs must be"):
        load_pairs(tiny_sice, "sice", "train", rules, pairing="every")


def test_real_sice_pairs_exclude_misaligned_and_clipped_targets() -> None:
    import csv

    require_shared("datasets", "sice-sequences")

    status = {(r["scene_id"], r["k"]): r["status"] for r in csv.DictReader((SHARED_SICE / "alignment.csv").open())}
    rules = PairRules()
    pairs = load_pairs(SHARED_SICE, "sice", "train", rules)
    assert len(pairs) > 300
    for p in pairs:
        assert status[(p.scene, p.low.stem)] != "misaligned"
        assert status[(p.scene, p.high.stem)] in ("ok", "ref")
    dev = load_pairs(SHARED_SICE, "sice", "dev", rules)
    assert {p.scene for p in pairs}.isdisjoint({p.scene for p in dev})


def _lol(root: Path, low: list[str], high: list[str]) -> Path:
    for side, names in (("low", low), ("high", high)):
        (root / "our485" / side).mkdir(parents=True)
        for n in names:
            Image.new("RGB", (8, 8)).save(root / "our485" / side / n)
    return root


def test_lol_pairs_by_name_and_mismatch_is_an_error(tmp_path: Path) -> None:
    root = _lol(tmp_path / "ok", ["1.png", "10.png", "2.png"], ["2.png", "1.png", "10.png"])
    pairs = lol_pairs(root, "train")
    assert [(p.low.name, p.high.name) for p in pairs] == [("1.png", "1.png"), ("10.png", "10.png"), ("2.png", "2.png")]
    bad = _lol(tmp_path / "bad", ["1.png", "2.png", "3.png"], ["1.png", "3.png", "4.png"])
    with pytest.raises(DataError, match=r"low only \['2.png'\].*high only \['4.png'\]"):
        lol_pairs(bad, "train")


def test_sampling_is_deterministic_and_sharded(tiny_sice: Path) -> None:
    pairs = sice_pairs(tiny_sice, "train", PairRules(target_mean=0.25, min_target_mean=0.1))
    cache = ImageCache()

    def draw(seed: int):
        rng = np.random.default_rng([seed, 1])
        return sample_batch(pairs, cache, batch_indices(len(pairs), 3, 2, seed), 32, rng, NoiseConfig())

    a, b, c = draw(0), draw(0), draw(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    n = 12
    shards = [batch_indices(n, 0, 3, seed=5, rank=r, world=4) for r in range(4)]
    assert sorted(i for s in shards for i in s) == list(range(n)), "one epoch = each index once across ranks"


def test_noise_makes_dark_frames_noisy_and_keeps_range() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128] / 128
    clean = np.stack([0.04 + 0.02 * xx, 0.04 + 0.02 * yy, 0.05 * np.ones_like(xx)], -1).astype(np.float32)
    cfg = NoiseConfig(jpeg_probability=0.0, shot_log10_range=(-3.0, -3.0), correlated_probability=0.0)
    noisy = degrade(clean, rng, cfg)
    assert noisy.shape == clean.shape and noisy.min() >= 0 and noisy.max() <= 1

    def sigma(x: np.ndarray) -> float:
        return float(estimate_sigma(np.clip(x * 0.4 / x.mean(), 0, 1), channel_axis=-1, average_sigmas=True))

    assert sigma(noisy) > 0.02 > sigma(clean)
    assert abs(noisy.mean() - clean.mean()) < 0.02, "noise must not change the exposure"


def test_correlated_noise_is_blotchy_at_unit_variance() -> None:
    def lag1(field: np.ndarray) -> float:
        return float(np.corrcoef(field[:, :-1].ravel(), field[:, 1:].ravel())[0, 1])

    rng = np.random.default_rng(0)
    iid = unit_noise((96, 96, 3), rng, NoiseConfig(correlated_probability=0.0))
    blotchy = unit_noise((96, 96, 3), rng, NoiseConfig(correlated_probability=1.0))
    assert blotchy.shape == iid.shape == (96, 96, 3)
    assert abs(float(blotchy.std()) - 1) < 0.05 and abs(float(blotchy.mean())) < 0.05
    assert lag1(iid) < 0.1 < 0.5 < lag1(blotchy), "the correlated field must be blotchy, the plain one not"


def test_missing_frames_are_reported(tmp_path: Path, tiny_sice: Path) -> None:
    import shutil

    copy = tmp_path / "sice"
    shutil.copytree(tiny_sice, copy)
    (copy / "s0001" / "1.jpg").unlink()
    with pytest.raises(DataError, match="s0001/1.jpg"):
        sice_pairs(copy, "train", PairRules(target_mean=0.25, min_target_mean=0.1))


def test_darkened_exposure_keeps_the_picture_and_adds_the_noise_of_a_shorter_exposure(tiny_sice: Path) -> None:
    pairs = load_pairs(tiny_sice, "sice", "train", PairRules(target_mean=0.25, min_target_mean=0.1))
    quiet = NoiseConfig(jpeg_probability=0.0, probability=1.0, correlated_probability=0.0)
    dark = dataclasses.replace(quiet, darken_probability=1.0, darken_range=(0.05, 0.05))

    def draw(cfg: NoiseConfig | None) -> np.ndarray:
        low, _ = sample_batch(pairs, ImageCache(), [0], 48, np.random.default_rng(3), cfg)
        return low[0].permute(1, 2, 0).numpy()

    clean, normal, darker = draw(None), draw(quiet), draw(dark)

    def sigma(x: np.ndarray) -> float:
        return float(estimate_sigma(x, channel_axis=-1, average_sigmas=True))

    # the whole-frame stretch brings the darker exposure back to the same picture…
    assert abs(float(darker.mean()) - float(clean.mean())) < 0.05
    # …with the stretch amplifying its noise: what a dim phone shot looks like to the networks
    assert sigma(darker) > 2 * sigma(normal)
    assert exposure_factor(np.random.default_rng(0), quiet) == 1.0
    assert 0.05 <= exposure_factor(np.random.default_rng(0), dataclasses.replace(dark, darken_range=(0.05, 1))) < 1


def test_a_kept_highlight_keeps_the_darkened_input_dark_through_the_stretch(tiny_sice: Path) -> None:
    pairs = load_pairs(tiny_sice, "sice", "train", PairRules(target_mean=0.25, min_target_mean=0.1))
    quiet = NoiseConfig(jpeg_probability=0.0, probability=1.0, correlated_probability=0.0)
    dark = dataclasses.replace(quiet, darken_probability=1.0, darken_range=(0.05, 0.05))
    kept = dataclasses.replace(dark, keep_highlight_probability=1.0)

    def draw(cfg: NoiseConfig) -> np.ndarray:
        low, _ = sample_batch(pairs, ImageCache(), [0], 48, np.random.default_rng(3), cfg)
        return low[0].numpy()

    restored, still_dark = draw(dark), draw(kept)
    assert still_dark.mean() < 0.35 * restored.mean(), "a kept highlight must leave the stretched input dark"
    # stretching with the noisy input's own extremes (as inference does) can only darken it further
    assert draw(dataclasses.replace(kept, stretch="degraded")).mean() <= still_dark.mean() + 1e-6


def test_row_noise_turns_with_the_crop() -> None:
    """Banding is added before the flips/rotations, so the net sees it both horizontal and vertical."""
    flat = np.full((64, 64, 3), 0.05, np.float32)
    cfg = NoiseConfig(jpeg_probability=0.0, correlated_probability=0.0, row_noise_fraction=3.0)
    directions = set()
    cache = ImageCache()
    cache._images[Path("flat")] = ((flat * 255).astype(np.uint8), 0.0, 1.0)
    pair = [Pair(Path("flat"), Path("flat"), "s")]
    for seed in range(8):
        low, _ = sample_batch(pair, cache, [0], 64, np.random.default_rng(seed), cfg)
        g = low[0].mean(0).numpy()
        rows, cols = g.mean(1).std(), g.mean(0).std()
        directions.add("rows" if rows > cols else "cols")
    assert directions == {"rows", "cols"}
