"""Whole-image enhancement: light level α (given or automatic), output modes, tiling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kind_serve.model import ALPHA_MAX, ALPHA_MIN, AlphaError, KinD, LightLevel
from kind_serve.model.compose import (
    BLACK_FLOOR,
    GAIN_CELL,
    GAIN_HEADROOM,
    gaussian_blur,
    limit_gain,
    luminance,
    median9,
    reduce_chroma_noise,
)
from kind_serve.model.image import to_tensor
from kind_serve.model.normalise import span, stretch
from kind_serve.model.tiling import TileMerger, canvas_window, split_windows, tiled


@pytest.fixture(scope="module")
def random_kind(random_bundle: Path) -> KinD:
    return KinD.load(random_bundle, device="cpu")


@pytest.fixture(scope="module")
def dicm_04(shared_dir: Path) -> torch.Tensor:
    """A dim indoor photo (640×480, mean ≈ 0.41 once normalised) from the DICM test set."""
    return to_tensor(Image.open(shared_dir / "datasets" / "real-lowlight" / "DICM" / "04.jpg"))


@pytest.mark.parametrize("bad", [0, -1, "0", float("nan"), "nan", float("inf"), 1e9, "abc", "", [5], None])
def test_bad_alpha_is_rejected(bad: object, random_kind: KinD) -> None:
    if bad is None:  # None means automatic, the one non-number that is accepted
        assert LightLevel.parse(bad).auto
        return
    with pytest.raises(AlphaError, match="alpha must be"):
        LightLevel.parse(bad)
    with pytest.raises(AlphaError):
        random_kind.enhance(np.zeros((4, 4, 3), np.uint8), alpha=bad)


@pytest.mark.parametrize(("value", "expected"), [("auto", None), (" AUTO ", None), ("2.5", 2.5), (5, 5.0)])
def test_good_alpha_is_accepted(value: object, expected: float | None) -> None:
    assert LightLevel.parse(value).value == expected


def test_alpha_range_ends_are_accepted() -> None:
    assert LightLevel.parse(ALPHA_MIN).value == ALPHA_MIN and LightLevel.parse(str(ALPHA_MAX)).value == ALPHA_MAX


def test_auto_alpha_brightens_a_darker_copy_more(official_kind: KinD, dicm_04: torch.Tensor) -> None:
    s = stretch(dicm_04)
    with torch.inference_mode():
        alpha = official_kind.choose_alpha(s, "photo")
        darker = official_kind.choose_alpha(stretch(s**1.5), "photo")  # survives the min-max stretch
        brighter = official_kind.choose_alpha(stretch(s**0.5), "photo")
    assert 1 < alpha < darker <= ALPHA_MAX
    assert brighter == 1.0  # already above the exposure target: never darkened


def test_auto_alpha_reaches_the_exposure_target(official_kind: KinD, dicm_04: torch.Tensor) -> None:
    result = official_kind.enhance(_to_pil(dicm_04), alpha="auto")
    assert 1 < result.alpha < ALPHA_MAX
    mean = np.asarray(result.image, dtype=np.float64).mean() / 255
    assert abs(mean - official_kind.defaults.exposure_target) < 0.04


def test_auto_alpha_is_at_least_one_for_any_image(random_kind: KinD) -> None:
    torch.manual_seed(0)
    with torch.inference_mode():
        for x in (torch.rand(1, 3, 50, 70), torch.zeros(1, 3, 9, 9), torch.ones(1, 3, 300, 200)):
            assert 1.0 <= random_kind.choose_alpha(stretch(x)) <= ALPHA_MAX


def _to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


def test_photo_and_paper_modes_differ_and_stay_in_range(official_kind: KinD, dicm_04: torch.Tensor) -> None:
    small = torch.nn.functional.interpolate(dicm_04, size=(120, 160), mode="area")
    photo, a1 = official_kind.enhance_tensor(small, alpha=5.0, mode="photo")
    paper, a2 = official_kind.enhance_tensor(small, alpha=5.0, mode="paper")
    assert a1 == a2 == 5.0
    assert photo.shape == paper.shape == small.shape
    for out in (photo, paper):
        assert out.min() >= 0 and out.max() <= 1
    assert (photo - paper).abs().mean() > 0.02
    with pytest.raises(ValueError, match="mode must be one of"):
        official_kind.enhance_tensor(small, alpha=5.0, mode="poster")


def test_higher_alpha_gives_a_brighter_image(official_kind: KinD, dicm_04: torch.Tensor) -> None:
    small = torch.nn.functional.interpolate(dicm_04, size=(96, 128), mode="area")
    means = [official_kind.enhance_tensor(small, alpha=a, mode="paper")[0].mean().item() for a in (1.0, 3.0, 9.0)]
    assert means[0] < means[1] < means[2]


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"),
    [(1080, 1920, 768, 64), (1500, 2000, 768, 64), (3000, 4000, 768, 64), (301, 217, 128, 32), (97, 500, 96, 8)],
)
def test_windows_cover_the_image_with_enough_overlap(h: int, w: int, tile: int, overlap: int) -> None:
    windows = split_windows(h, w, tile, overlap)
    cover = torch.zeros(h, w, dtype=torch.int32)
    for win in windows:
        assert win.top % 16 == 0 and win.left % 16 == 0  # same pooling grid as the whole image
        # the memory bound: a canvas of at most tile² pixels, no side longer than twice the tile
        canvas = canvas_window(win, h, w)
        assert canvas.height * canvas.width <= tile * tile or max(win.height, win.width) <= tile
        assert 0 < win.height <= 2 * tile and 0 < win.width <= 2 * tile
        cover[win.top : win.top + win.height, win.left : win.left + win.width] += 1
    assert cover.min() >= 1
    for axis in (0, 1):
        spans = sorted({(win.top, win.height) if axis == 0 else (win.left, win.width) for win in windows})
        for (a, la), (b, _) in zip(spans, spans[1:], strict=False):
            assert a + la - b >= overlap
    work = sum(canvas.height * canvas.width for canvas in (canvas_window(win, h, w) for win in windows))
    if (h, w) == (1080, 1920):  # a 1080p photo costs < 1.25× its own area in 768-px tiles
        assert work < 1.25 * h * w
    if (h, w) == (1500, 2000):  # a 12 MP photo on the fast path: 2×3 tall tiles, not 3×3 (1.27×)
        assert work < 1.2 * h * w


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize(("h", "w", "tile", "overlap"), [(301, 217, 128, 32), (1080, 1920, 768, 64), (97, 500, 96, 8)])
def test_tile_blending_reassembles_the_image_exactly(h: int, w: int, tile: int, overlap: int, channels: int) -> None:
    x = torch.rand(1, 3, h, w)
    out = tiled(lambda b: b[:, :1].expand(-1, channels, -1, -1) * 2, x, tile, overlap, tiles_per_batch=3)
    torch.testing.assert_close(out, x[:, :1].expand(-1, channels, -1, -1) * 2)


def test_tiles_blend_in_place_into_a_float16_canvas_in_any_order() -> None:
    # the service blends its tiles straight into the cached float16 parts, as they arrive
    x = torch.rand(1, 2, 1080, 1920)
    windows = split_windows(1080, 1920, 512, 64)
    outputs = [x[..., w.top : w.top + w.height, w.left : w.left + w.width] * 0.5 for w in windows]
    exact = tiled(lambda b: b * 0.5, x, 512, 64)
    for order in (range(len(windows)), reversed(range(len(windows)))):
        canvas = torch.full((1, 2, 1080, 1920), float("nan"), dtype=torch.float16)
        merger = TileMerger(canvas, windows, 64)
        for i in order:
            merger.add(windows[i], outputs[i])
        assert merger.canvas is canvas
        # float16's rounding of each partial sum (2⁻¹¹ of [0.5, 1)), far inside an 8-bit output's step
        assert (canvas.float() - exact).abs().max() <= 2 * 2**-11


def test_tiled_output_matches_the_whole_image_on_a_1080p_photo(shared_dir: Path, official_kind: KinD) -> None:
    path = shared_dir / "datasets" / "real-lowlight" / "phone-exposures" / "435_1_.png"
    x = to_tensor(Image.open(path))
    assert x.shape[-2:] == (1080, 1920)
    whole, alpha = official_kind.enhance_tensor(x, alpha="auto", tile_size=2048)
    tiles, alpha_tiled = official_kind.enhance_tensor(x, alpha="auto", tile_size=768)
    assert alpha == alpha_tiled  # α comes from the whole image, not per tile
    psnr = 10 * math.log10(1 / (whole - tiles).pow(2).mean().item())
    assert psnr >= 40, psnr


SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "kind-sice"


def _high_pass(x: torch.Tensor) -> float:
    """Std of what a 5×5 box blur removes: the noise (and fine texture) left in an image."""
    return float((x - torch.nn.functional.avg_pool2d(x, 5, 1, 2, count_include_pad=False)).std())


def test_photo_mode_does_not_hand_back_the_noise_the_stretch_amplified() -> None:
    """A dim capture without highlights: the stretch multiplies its noise ×12; the fusion must not reuse it."""
    kind = KinD.load(SHIPPED, device="cpu")
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    scene = torch.stack([0.3 + 0.5 * xx, 0.3 + 0.4 * yy, 0.5 - 0.2 * xx * yy])[None]
    dim = ((scene * 0.08 + torch.randn(scene.shape, generator=gen) * 0.004) * 255).round().clamp(0, 255) / 255
    s, captured = stretch(dim), span(dim)
    assert float(captured) < 0.1
    with torch.inference_mode():
        authors = kind(s, 3.0, "photo", span=1.0)
        ours = kind(s, 3.0, "photo", span=captured)
        full_range = stretch(scene)  # an image that already spans [0, 1]: the authors' formula
        assert torch.equal(kind(full_range, 3.0, "photo"), kind(full_range, 3.0, "photo", span(full_range)))
    assert _high_pass(ours) < 0.6 * _high_pass(authors)
    auto, _ = kind.enhance_tensor(dim, "auto", "photo")
    assert _high_pass(auto) < 0.6 * _high_pass(s), "the default output is cleaner than the stretched input"


def test_photo_mode_keeps_the_fine_texture_of_a_clean_well_lit_image() -> None:
    """A clean capture of a fine texture (4-px period, 10 % contrast, spanning [0, 1]): the restoration net
    smooths it to about a quarter of its contrast; photo mode hands the lost detail back where R is clean."""
    kind = KinD.load(SHIPPED, device="cpu")
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(128), indexing="ij")
    pattern = torch.sin(torch.pi * xx / 2) * torch.sin(torch.pi * yy / 2)
    image = (0.3 * torch.tensor([1.0, 0.9, 0.8]).view(3, 1, 1) + 0.05 * pattern).clamp(0, 1)[None]
    image[..., :4, :4], image[..., -4:, -4:] = 0.0, 1.0  # the capture spans [0, 1]: no stretch, span 1

    def contrast(x: torch.Tensor) -> float:
        """The pattern's amplitude in the grey of ``x``, relative to its mean (away from the marked corners)."""
        grey, p = x[0].mean(0)[8:-8, 8:-8], pattern[8:-8, 8:-8]
        return float(((grey - grey.mean()) * p).sum() / (p * p).sum() / grey.mean())

    with torch.inference_mode():
        out, _ = kind.enhance_tensor(image, 2.0, "photo")
        paper, _ = kind.enhance_tensor(image, 2.0, "paper")
    assert contrast(paper) < 0.3 * contrast(image), "the restoration net smooths the texture (what photo mode mends)"
    assert contrast(out) > 0.5 * contrast(image)


def test_a_night_sky_stays_dark_in_the_default_output(shared_dir: Path) -> None:
    """DICM 01: a lit tower under a black sky (input ≈ 0.004) that turned brown at the old automatic α = 20."""
    kind = KinD.load(SHIPPED, device="cpu")
    image = Image.open(shared_dir / "datasets" / "real-lowlight" / "DICM" / "01.jpg").convert("RGB")
    image.thumbnail((160, 160))
    x = to_tensor(image)
    h, w = x.shape[-2:]
    sky = (..., slice(0, h * 3 // 10), slice(w * 7 // 10, w))
    with torch.inference_mode():
        out, alpha = kind.enhance_tensor(x, "auto", "photo")
    assert alpha < 8, "the black sky is not metered"
    assert float(out[sky].mean()) <= GAIN_HEADROOM * alpha * float(x[sky].mean()) + 0.01
    assert float(out[sky].mean()) < 0.08
    assert float(out.mean()) > float(x.mean()) + 0.1, "the scene itself is brightened"


def test_gain_limit_darkens_only_what_exceeds_headroom_times_alpha_and_keeps_colour() -> None:
    bright = torch.tensor([0.6, 0.4, 0.2]).view(1, 3, 1, 1).expand(2, 3, 16, 16)
    image = torch.cat([torch.full((1, 3, 16, 16), 0.01), torch.full((1, 3, 16, 16), 0.2)])
    out = limit_gain(bright, image, torch.tensor([2.0, 2.0]))
    ceiling = GAIN_HEADROOM * 2.0 * 0.01
    assert torch.allclose(luminance(out[:1]), torch.full((1, 1, 16, 16), ceiling), atol=1e-6)
    assert torch.allclose(out[0] / out[0].sum(0), bright[0] / bright[0].sum(0), atol=1e-6), "hue kept"
    assert torch.equal(out[1], bright[1]), "within the headroom: unchanged"


def test_gain_limit_does_not_print_the_noise_of_a_dark_frame() -> None:
    """A frame at 0.004 under blotchy noise of σ 0.004: the limit binds everywhere, evenly ("camouflage" if not)."""
    gen = torch.Generator().manual_seed(0)
    blotches = F.interpolate(torch.randn(1, 1, 64, 64, generator=gen), scale_factor=2, mode="bilinear")
    image = (0.004 + 0.004 * blotches / blotches.std()).clamp_min(0).expand(1, 3, 128, 128)
    bright = torch.full((1, 3, 128, 128), 0.4)
    out = luminance(limit_gain(bright, image, 20.0))
    assert float(out.mean()) < 0.3, "the limit binds: 3·α·0.004 = 0.24 is below 0.4"
    assert float(out.std() / out.mean()) < 0.2, "an even gain, not the pattern of the noise (pixel by pixel: 0.32)"


def test_gain_limit_keeps_a_lamp_bright_and_the_black_around_it_black() -> None:
    image = torch.full((1, 3, 96, 96), 0.001)
    image[..., 40:48, 40:48] = 1.0
    bright = torch.full((1, 3, 96, 96), 0.3)
    bright[..., 40:48, 40:48] = 1.0
    out = luminance(limit_gain(bright, image, 10.0))[0, 0]
    assert float(out[42:46, 42:46].min()) > 0.9, "the lamp"
    # an 8-bit photo cannot tell 0.001 from black: the sky may rise to α·headroom × half a code value, no more
    ceiling = GAIN_HEADROOM * 10.0 * max(0.001, BLACK_FLOOR)
    assert float(out[:, 40 - 3 * GAIN_CELL].max()) <= ceiling + 1e-6, "no halo of veil"
    assert float(out[:, 40 - 3 * GAIN_CELL].max()) <= float(out[:, 0].min()) + 1e-4, "as dark as the far sky"


def test_gain_limit_cuts_no_hole_where_a_near_black_object_meets_a_lit_area() -> None:
    """A person in shadow beside a fire: a dark frame under shot noise, a lit wall, and beside it an object whose
    pixels are code 0 (a phone's noise reduction leaves them flat). The brightened branch shows the object as a
    dark, smooth silhouette, as paper mode does; photo mode must not cut it back to the input's black."""
    gen = torch.Generator().manual_seed(0)
    scene = torch.full((1, 1, 128, 128), 0.012)
    scene[..., 88:] = 0.5  # the lit wall
    scene[..., 24:104, 40:88] = 0.0  # the object, beside it
    noisy = scene + 0.02 * scene.sqrt() * torch.randn(scene.shape, generator=gen)
    image = ((noisy * 255).round().clamp(0, 255) / 255).expand(1, 3, 128, 128)
    bright = gaussian_blur(torch.where(scene > 0.1, 0.8, torch.where(scene > 0.0, 0.35, 0.15)), 2.0)
    out = luminance(limit_gain(bright.expand(1, 3, 128, 128), image, 15.0))[0, 0]
    inside = out[40:88, 48:80]
    assert float(inside.mean()) > 0.4 * 0.15, "a dark silhouette, not the input's black (before: 0)"
    assert float(inside.std() / inside.mean()) < 0.1, "evenly, without cell-shaped patches"
    assert torch.allclose(out[:, 100:], luminance(bright)[0, 0, :, 100:], atol=1e-3), "the lit wall is untouched"


def test_median9_is_the_median() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(9, 200, generator=gen)
    values[:, :100] = values[:, :100].round()  # ties
    assert torch.equal(median9(list(values)), values.median(dim=0).values)


def test_chroma_noise_reduction_removes_colour_speckle_and_keeps_luminance() -> None:
    gen = torch.Generator().manual_seed(0)
    grey = torch.full((1, 3, 64, 64), 0.5)
    ramp = torch.linspace(0.2, 0.8, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    speckled = grey + ramp - 0.5 + 0.05 * torch.randn(grey.shape, generator=gen)
    out = reduce_chroma_noise(speckled)
    assert torch.allclose(luminance(out), luminance(speckled), atol=1e-5), "luminance kept"
    chroma_in = speckled - luminance(speckled)
    chroma_out = out - luminance(out)
    assert float(chroma_out[..., 8:-8, 8:-8].std()) < 0.2 * float(chroma_in[..., 8:-8, 8:-8].std())


def test_chroma_noise_reduction_keeps_a_lamps_colour_off_the_black_sky_beside_it() -> None:
    sky = torch.full((1, 3, 64, 64), 0.01)
    sky[..., 24:40, 24:40] = torch.tensor([1.0, 0.8, 0.2]).view(1, 3, 1, 1)  # a yellow lamp
    out = reduce_chroma_noise(sky)
    plain = luminance(sky) + gaussian_blur(sky - luminance(sky), 3.0)  # the colour blurred everywhere alike
    ring = torch.zeros(64, 64, dtype=torch.bool)
    ring[18:46, 18:46] = True
    ring[22:42, 22:42] = False  # 2 to 6 px outside the lamp
    colour = (out - luminance(out)).abs().sum(dim=1)[0]
    colour_plain = (plain - luminance(plain)).abs().sum(dim=1)[0]
    assert float(colour[ring].mean()) < float(colour_plain[ring].mean()) / 3, "no coloured halo on the sky"
    assert torch.allclose(colour[28:36, 28:36], colour_plain[28:36, 28:36], atol=1e-6), "the lamp keeps its colour"
    # texture (no pixel under half its neighbourhood's luminance) keeps the whole blurred colour
    checks = (torch.arange(64).view(-1, 1) // 4 + torch.arange(64) // 4) % 2
    texture = torch.stack([0.3 + 0.3 * checks, 0.25 + 0.2 * checks, 0.1 + 0.1 * checks]).float()[None]
    assert torch.allclose(
        reduce_chroma_noise(texture), luminance(texture) + gaussian_blur(texture - luminance(texture), 3.0), atol=1e-6
    )
