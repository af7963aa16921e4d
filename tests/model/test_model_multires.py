"""The fast path (``quality="fast"``, model.multires): the networks at half resolution, detail brought back.

What a user notices: a large photo's networks see a quarter of its pixels; the result stays close to the full
path's and keeps more of its fine detail than a plain upsampling would; small images are not touched; a wrong
quality is refused by name.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from kind_serve.model import KinD, LightLevel, multires, recipe
from kind_serve.model.image import to_tensor

from ..conftest import require_shared


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A real dark phone frame, 480×270: foliage, edges, noise."""
    path = require_shared("datasets", "real-lowlight", "phone-exposures", "435_0_.png")
    with Image.open(path) as im:
        return to_tensor(im.convert("RGB").resize((480, 270), Image.Resampling.BOX))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).square().mean()))


def detail(x: torch.Tensor) -> float:
    """Mean absolute horizontal and vertical difference: how much fine texture an image holds."""
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean())


def test_small_images_take_the_full_path_whatever_the_quality(kind: KinD, photo: torch.Tensor) -> None:
    assert photo.shape[-2] * photo.shape[-1] <= multires.FAST_MIN_PIXELS
    full, _ = recipe.enhance(kind, photo, LightLevel(4.0))
    fast, _ = recipe.enhance(kind, photo, LightLevel(4.0), quality="fast")
    assert torch.equal(fast, full)


def test_fast_runs_the_networks_on_a_quarter_of_the_pixels_and_stays_close(
    kind: KinD, photo: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []  # pixels of each canvas the networks ran on (padded to the tiling's multiple)
    decompose = kind.decompose
    monkeypatch.setattr(kind, "decompose", lambda x: seen.append(x.shape[-2] * x.shape[-1]) or decompose(x))
    full, alpha = recipe.enhance(kind, photo, LightLevel(5.0))
    monkeypatch.setattr(multires, "FAST_MIN_PIXELS", 0)  # this small photo stands in for a large one
    fast, fast_alpha = recipe.enhance(kind, photo, LightLevel(5.0), quality="fast")
    assert len(seen) == 2 and seen[1] <= 0.35 * seen[0]
    assert fast.shape == full.shape and fast_alpha == alpha
    assert psnr(fast, full) > 25  # 29–34 dB on real 2–12 MP photos; this one is denser
    # no detail brought back: the networks' maps only upsampled (R̂'s weight 0, R untouched)
    monkeypatch.setattr(
        recipe,
        "lift",
        lambda s, low, nets, out: out.copy_(
            torch.nn.functional.interpolate(nets.float(), size=s.shape[-2:], mode="bilinear", align_corners=False)
        ),
    )
    upsampled, _ = recipe.enhance(kind, photo, LightLevel(5.0), quality="fast")
    assert abs(detail(fast) - detail(full)) < abs(detail(upsampled) - detail(full))
    assert psnr(fast, full) > psnr(upsampled, full)


def test_an_unknown_quality_is_refused_by_name(kind: KinD, photo: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="quality must be one of full, fast"):
        recipe.compute_parts(kind, photo, quality="best")  # type: ignore[arg-type]


def test_fast_parts_adjust_the_light_at_the_networks_resolution_tiles_leaving_no_trace(
    kind: KinD, photo: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new α on a fast path's parts runs the adjustment net on a quarter of the pixels, as the networks did,
    and a tiled re-lighting still equals the whole image's."""
    monkeypatch.setattr(multires, "FAST_MIN_PIXELS", 0)
    parts = recipe.compute_parts(kind, photo, quality="fast")
    assert parts.scale == multires.FAST_FACTOR
    seen: list[int] = []
    adjust = kind.adjust
    monkeypatch.setattr(kind, "adjust", lambda x, a: seen.append(x.shape[-2] * x.shape[-1]) or adjust(x, a))
    whole, _ = recipe.relight(kind, parts, LightLevel(6.0), "photo", tile_size=1024)
    assert seen == [135 * 240]
    tiled, _ = recipe.relight(kind, parts, LightLevel(6.0), "photo", tile_size=64)  # regions on even origins
    assert float((tiled - whole).abs().max()) < 1e-5
    at_full, _ = recipe.relight(kind, parts._replace(scale=1), LightLevel(6.0), "photo", tile_size=1024)
    assert psnr(whole, at_full) > 40  # the lifted L is smooth at full resolution: little for the net to see
