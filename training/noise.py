"""Low-light sensor noise for training inputs.

The SICE frames were downscaled and JPEG-compressed, which wiped out their sensor noise; trained on them
as they are, the restoration net never learns to denoise. We re-synthesise it at the frame's own exposure:

1. sRGB → linear; divide by random white-balance gains to get back to "raw" channel levels;
2. heteroscedastic Poisson–Gaussian noise, variance = λ_shot·x + λ_read, with a random sensor gain
   (λ_shot log-uniform; λ_read tied to it as measured on real sensors: Brooks et al., "Unprocessing
   Images for Learned Raw Denoising", CVPR 2019), plus per-row offsets (banding);
3. white balance back (R and B noise amplified → colour noise), linear → sRGB, 8-bit quantisation,
   and optionally JPEG at a random quality.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .config import NoiseConfig


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def darken(x: np.ndarray | float, k: float) -> np.ndarray:
    """The same sRGB content at ``k`` times the exposure (linear light scaled by ``k``)."""
    return linear_to_srgb(srgb_to_linear(np.asarray(x, dtype=np.float32)) * k)


def exposure_factor(rng: np.random.Generator, cfg: NoiseConfig) -> float:
    """Random exposure reduction (1 = as captured) per ``cfg.darken_probability``/``darken_range``."""
    if cfg.darken_probability <= 0 or rng.random() >= cfg.darken_probability:
        return 1.0
    lo, hi = np.log(cfg.darken_range[0]), np.log(cfg.darken_range[1])
    return float(np.exp(rng.uniform(lo, hi)))


def unit_noise(shape: tuple[int, ...], rng: np.random.Generator, cfg: NoiseConfig) -> np.ndarray:
    """Zero-mean, unit-variance noise field, i.i.d. or (with ``cfg.correlated_probability``) blotchy."""
    if rng.random() >= cfg.correlated_probability:
        field = rng.normal(size=shape).astype(np.float32)
    else:
        h, w, c = shape
        scale = rng.uniform(*cfg.correlation_scale_range)
        small = rng.normal(size=(max(1, round(h / scale)), max(1, round(w / scale)), c)).astype(np.float32)
        field = np.stack([_resize(small[..., i], (w, h)) for i in range(c)], axis=-1)
        field = (field - field.mean()) / max(float(field.std()), 1e-6)
    if cfg.channel_correlation > 0:
        rho = cfg.channel_correlation
        field = np.sqrt(rho) * field.mean(axis=-1, keepdims=True) + np.sqrt(1 - rho) * field
        field = field / max(float(field.std()), 1e-6)  # the shared part is not independent of each channel's
    return field.astype(np.float32)


def _resize(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(channel).resize(size, Image.Resampling.BICUBIC))


def degrade(image: np.ndarray, rng: np.random.Generator, cfg: NoiseConfig) -> np.ndarray:
    """Noisy version of an H×W×3 float sRGB image in [0, 1] (returns float32 in [0, 1])."""
    wb = np.array([rng.uniform(*cfg.wb_red_range), 1.0, rng.uniform(*cfg.wb_blue_range)], dtype=np.float32)
    raw = srgb_to_linear(image) / wb
    log_shot = rng.uniform(*cfg.shot_log10_range) * np.log(10)
    log_read = cfg.read_slope * log_shot + cfg.read_intercept + rng.normal(0, cfg.read_jitter)
    shot, read = np.exp(log_shot), np.exp(log_read)
    sigma = np.sqrt(shot * np.clip(raw, 0, None) + read)
    raw = raw + unit_noise(raw.shape, rng, cfg) * sigma
    raw = raw + rng.normal(size=(raw.shape[0], 1, 1)).astype(np.float32) * cfg.row_noise_fraction * np.sqrt(read)
    out = np.round(linear_to_srgb(raw * wb) * 255).astype(np.uint8)
    if rng.random() < cfg.jpeg_probability:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, "JPEG", quality=int(rng.integers(*cfg.jpeg_quality_range, endpoint=True)))
        out = np.asarray(Image.open(buf).convert("RGB"))
    return out.astype(np.float32) / 255
