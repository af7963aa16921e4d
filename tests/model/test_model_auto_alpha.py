"""Automatic α when the exposure target is out of reach."""

from __future__ import annotations

import math

import torch

from kind_serve.model.auto_alpha import BLACK_LEVEL, auto_alpha_from_parts, metered_pixels
from kind_serve.model.light import ALPHA_MAX


def _parts(level: float) -> dict[str, torch.Tensor]:
    s = torch.full((1, 3, 8, 8), level)
    return {
        "S": s,
        "R": torch.full_like(s, 0.5),
        "L": torch.full((1, 1, 8, 8), level),
        "R_hat": torch.full_like(s, 0.5),
    }


def _saturating_adjust(illum: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # brightens up to α = 6, then falls off: like an adjustment net pushed past its training range
    gain = torch.where(alpha <= 6, alpha, 6 - 0.5 * (alpha - 6)).view(-1, 1, 1, 1)
    return (illum * gain).clamp(0, 1)


def test_unreachable_target_takes_the_brightest_alpha_not_the_maximum() -> None:
    alpha = auto_alpha_from_parts(_parts(0.02), _saturating_adjust, target=0.45, mode="paper")
    assert alpha < ALPHA_MAX
    assert math.isclose(alpha, 6, rel_tol=0.1)


def test_reachable_target_is_hit_by_interpolation() -> None:
    alpha = auto_alpha_from_parts(_parts(0.2), _saturating_adjust, target=0.3, mode="paper")
    # paper output = R̂·L̂ = 0.5 · 0.2 · α → 0.3 at α = 3
    assert math.isclose(alpha, 3, rel_tol=0.02)


def _night(level: float, black_share: float) -> dict[str, torch.Tensor]:
    """A lit subject (``level``) in front of a black background covering ``black_share`` of the columns."""
    parts = _parts(level)
    cols = round(8 * black_share)
    for key in ("S", "L"):
        parts[key][..., :cols] = 0.0
    return parts


def test_black_background_does_not_raise_alpha() -> None:
    # half the frame is a black night sky: metering it would demand twice the α and lift the sky to a veil
    lit_only = auto_alpha_from_parts(_parts(0.2), _saturating_adjust, target=0.3, mode="paper")
    night = auto_alpha_from_parts(_night(0.2, 0.5), _saturating_adjust, target=0.3, mode="paper")
    assert math.isclose(night, lit_only, rel_tol=0.02)


def test_nearly_black_frame_is_metered_whole() -> None:
    # 7 of 8 columns black: the lit eighth is still enough signal (≥ MIN_METERED) and is metered alone
    assert math.isclose(
        auto_alpha_from_parts(_night(0.2, 7 / 8), _saturating_adjust, target=0.3, mode="paper"), 3, rel_tol=0.02
    )
    # all black but a few pixels: too little signal to meter, so the whole frame counts and α goes up
    parts = _parts(0.2)
    for key in ("S", "L"):
        parts[key][..., :, :] = 0.0
        parts[key][..., 0, 0] = 0.2
    whole = auto_alpha_from_parts(parts, _saturating_adjust, target=0.3, mode="paper")
    assert whole > 5


def test_alpha_stops_before_the_lit_part_of_the_scene_clips() -> None:
    # a lit facade (R̂ = 1, L = 0.5) beside a dim street: lifting the street to the target would blow the
    # facade out; the training targets were chosen with at most 5 % clipped pixels, and so is α
    parts = _parts(0.05)
    parts["R_hat"][..., :4] = 1.0
    parts["L"][..., :4] = 0.5
    free = auto_alpha_from_parts(parts, _saturating_adjust, target=0.55, mode="paper")
    capped = auto_alpha_from_parts(parts, _saturating_adjust, target=0.55, mode="paper", max_clipped=0.05)
    assert free > 3
    assert 1.5 < capped < 0.98 / 0.5, "the facade reaches 250/255 at α = 1.96"
    # already clipped at α = 1: never darkened, α stays 1
    parts["L"][..., :4] = 1.0
    assert auto_alpha_from_parts(parts, _saturating_adjust, target=0.45, mode="paper", max_clipped=0.05) == 1.0


def _linear_adjust(illum: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return (illum * alpha.view(-1, 1, 1, 1)).clamp(0, 1)


def _dark_scene() -> dict[str, torch.Tensor]:
    """A genuinely dark photo: the scene at 0.01–0.03 (mostly below BLACK_LEVEL) and one small lamp at 0.95."""
    s = torch.full((1, 3, 16, 16), 0.01)
    s[..., 10:] = 0.03
    s[..., :2, :2] = 0.95
    return {"S": s, "R": torch.full_like(s, 0.5), "L": s[:, :1].clone(), "R_hat": torch.full_like(s, 0.5)}


def test_a_scene_that_sits_below_the_black_level_is_metered_whole() -> None:
    parts = _dark_scene()
    assert float((parts["S"] > BLACK_LEVEL).float().mean()) < 0.5, "most of the scene is below the black level"
    assert bool(metered_pixels(parts["S"]).all())
    # the frame's mean illumination is ≈ 0.021, so the paper output 0.5 · L · α reaches 0.05 at α ≈ 4.9;
    # metering only what is above BLACK_LEVEL (the 0.03 columns and the lamp) would stop at α ≈ 2.1
    alpha = auto_alpha_from_parts(parts, _linear_adjust, target=0.05, mode="paper")
    assert 4.5 < alpha < 5.3
