"""The real-noise panel: its figures see noise, streaks, holes, washed-out colour and noise kept across frames."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kind_serve.training.panel import (
    CROP,
    Shot,
    banding,
    chroma_kept,
    evaluate_panel,
    holes,
    noise_kept,
    residual_noise,
    select,
    streaks,
)


def _scene(seed: int = 0, size: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(size, size), mode="bilinear")
    return (0.2 + 0.6 * base).clamp(0, 1)


def _noise(seed: int, sigma: float, shape: tuple[int, ...] = (1, 3, 96, 96)) -> torch.Tensor:
    return sigma * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_residual_noise_and_banding_see_noise_and_streaks() -> None:
    clean = _scene()
    noisy = (clean + _noise(1, 0.03)).clamp(0, 1)
    assert residual_noise(noisy) > 0.02 > residual_noise(clean) + 0.01
    streaks = clean + 0.02 * torch.randn(1, 1, 96, 1, generator=torch.Generator().manual_seed(2))  # per-row offsets
    assert banding(noisy) < 2.0, "uncorrelated noise: about 1"
    assert banding((streaks + _noise(3, 0.01)).clamp(0, 1)) > 4 * banding(noisy)
    assert banding((streaks + _noise(3, 0.01)).clamp(0, 1).transpose(-1, -2)) > 4 * banding(noisy), "columns too"


def test_streaks_measure_the_lines_whatever_the_other_noise() -> None:
    clean = _scene()
    lines = 0.02 * torch.randn(1, 1, 96, 1, generator=torch.Generator().manual_seed(2))  # per-row offsets
    noisier, cleaner = clean + lines + _noise(3, 0.02), clean + lines + _noise(3, 0.005)
    assert banding(cleaner) > 1.2 * banding(noisier), "banding is relative to the output's own noise"
    assert streaks(cleaner) == pytest.approx(streaks(noisier), rel=0.25), "streaks are not"
    assert streaks(cleaner) > 4 * streaks(clean + _noise(3, 0.005))


def test_holes_count_only_black_patches_next_to_lit_areas() -> None:
    paper = torch.full((1, 3, 96, 96), 0.2)
    paper[..., :, 60:] = 0.8  # the lit side
    photo = paper.clone()
    photo[..., 10:30, 40:56] = 0.01  # a hole beside the lit side
    photo[..., 70:90, 0:16] = 0.01  # black far from it: a night sky, not counted
    assert holes(paper, paper) == 0.0
    assert abs(holes(photo, paper) - 20 * 16 / 96**2) < 1e-6


def test_chroma_kept_sees_washed_out_colour_but_not_brightening() -> None:
    image = _scene() * 0.1
    assert abs(chroma_kept(image * 5, image) - 1.0) < 0.05, "brightening alone keeps the colour"
    grey = image.mean(dim=1, keepdim=True)
    assert chroma_kept((0.5 * image + 0.5 * grey) * 5, image) < 0.6


def test_noise_kept_is_the_share_of_frame_to_frame_noise_left() -> None:
    scene = _scene() * 0.05
    inputs = [(scene + _noise(i, 0.004)).clamp(0, 1) for i in range(4)]
    assert abs(noise_kept(inputs, [x * 8 for x in inputs]) - 1.0) < 1e-3, "brightening keeps all of it"
    denoised = [(scene * 8 + 0.2 * (x - scene) * 8) for x in inputs]
    assert 0.15 < noise_kept(inputs, denoised) < 0.25


def test_the_panel_selects_dark_photos_crops_them_and_groups_phone_frames(tmp_path: Path) -> None:
    (tmp_path / "DICM").mkdir()
    (tmp_path / "phone-exposures").mkdir()
    dark = (_scene(size=1100)[0].permute(1, 2, 0).numpy() * 0.05 * 255).astype("uint8")
    Image.fromarray(dark).save(tmp_path / "DICM" / "01.jpg", quality=95)
    Image.fromarray((dark * 10).clip(0, 255).astype("uint8")).save(tmp_path / "DICM" / "02.jpg")  # not dark
    for k in range(2):
        noisy = (dark.astype("float32") + torch.randn(dark.shape).numpy() * 2).clip(0, 255).astype("uint8")
        Image.fromarray(noisy[:200, :300]).save(tmp_path / "phone-exposures" / f"7_{k}_.png")
    shots = select(tmp_path)
    assert [s.name for s in shots] == ["DICM/01.jpg", "phone-exposures/7_0_.png", "phone-exposures/7_1_.png"]
    assert shots[1] == Shot("phone-exposures/7_0_.png", "7", shots[1].mean)

    seen: list[tuple[int, ...]] = []

    def brighten(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(tuple(image.shape))
        return (image * 8).clamp(0, 1), (image * 8).clamp(0, 1)

    summary, rows = evaluate_panel(brighten, tmp_path, shots)
    assert seen[0] == (1, 3, CROP, CROP), "larger photos: the centre crop at 100 %"
    assert summary["photos"] == 3 and summary["holes"] == 0.0
    assert abs(rows["phone-exposures/7 (scene)"]["kept"] - 1.0) < 0.05, "brightening keeps the frames' noise"
