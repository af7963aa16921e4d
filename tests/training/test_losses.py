from __future__ import annotations

import torch

from kind_serve.training import losses
from kind_serve.training.stages import adjustment_targets


def test_official_gradient_has_the_spurious_border_and_corrected_does_not() -> None:
    x = torch.full((1, 1, 16, 16), 0.5)
    x[..., 4:12, 8:] += torch.linspace(0, 0.2, 8)  # interior horizontal ramp
    official = losses.gradient(x, "x", official=True)
    corrected = losses.gradient(x, "x", official=False)
    # the zero column on the right makes the largest "edge" in the official operator
    assert official[..., :, -1].max() == official.max()
    assert corrected[..., :, -1].max() < corrected.max()
    # interior gradients are squashed by the border in the official operator
    assert official[..., 6, 9] < corrected[..., 6, 9]


def test_ssim_term_is_zero_for_identical_images_and_losses_are_positive() -> None:
    torch.manual_seed(0)
    a = torch.rand(2, 3, 32, 32)
    assert losses.restore_loss(a, a).item() < 1e-5
    assert losses.restore_loss(a, torch.rand(2, 3, 32, 32)).item() > 0.5
    l_low, l_high = torch.rand(2, 1, 32, 32) * 0.2, torch.rand(2, 1, 32, 32)
    s = torch.rand(2, 3, 32, 32)
    assert losses.decom_loss(s, l_low, s, l_high, s * l_low, s * l_high).item() > 0


def test_adjustment_targets_pair_direction_with_alpha() -> None:
    import numpy as np

    l_low = torch.full((64, 1, 8, 8), 0.1)
    l_high = torch.full((64, 1, 8, 8), 0.5)
    source, target, alpha = adjustment_targets(l_low, l_high, np.random.default_rng(0))
    brighten = source[:, 0, 0, 0] < target[:, 0, 0, 0]
    assert 0 < brighten.sum() < 64, "both directions are sampled"
    assert torch.allclose(alpha[brighten], torch.tensor(5.0), rtol=1e-2)
    assert torch.allclose(alpha[~brighten], torch.tensor(0.2), rtol=1e-2)


def test_illumination_prior_warm_up_fades_out() -> None:
    import numpy as np

    from kind_serve.training.config import load_config
    from kind_serve.training.stages import STAGES, Nets, loss_options

    image = torch.rand(2, 3, 16, 16)
    assert losses.illumination_prior(image.amax(dim=1, keepdim=True), image).item() == 0
    assert losses.illumination_prior(torch.full((2, 1, 16, 16), 0.5), image).item() > 0.1

    from kind_serve.model import KinD

    kind = KinD()
    nets = Nets(kind.decom, kind.adjustment, kind.restoration)
    cfg = load_config(overrides=["illumination_prior_steps=10"])
    rng = np.random.default_rng(0)
    low, high = image * 0.2, image
    at = {
        step: STAGES["decom"].loss(nets, low, high, rng, loss_options(cfg, "decom"), step).item() for step in (0, 5, 10)
    }
    assert at[0] > at[5] > at[10], "the prior term's weight goes 1 → 0 over the warm-up"


class _Decomposer:
    """Stand-in for KinD.decompose: ``good`` keeps R exposure-invariant and reconstructs S exactly."""

    def __init__(self, good: bool) -> None:
        self.good = good
        self.rng = torch.Generator().manual_seed(0)

    def decompose(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.good:
            return s, torch.ones_like(s[:, :1])
        noise = torch.rand(s.shape, generator=self.rng)
        return noise, torch.rand(s[:, :1].shape, generator=self.rng)


def test_decomposition_quality_ranks_a_consistent_decomposition_above_a_random_one(tiny_sice) -> None:  # noqa: ANN001
    from kind_serve.training.config import PairRules
    from kind_serve.training.data import ImageCache, sice_pairs
    from kind_serve.training.evaluate import decomposition_quality

    pairs = sice_pairs(tiny_sice, "train", PairRules(target_mean=0.25, min_target_mean=0.1))
    good = decomposition_quality(_Decomposer(True), pairs, ImageCache())
    bad = decomposition_quality(_Decomposer(False), pairs, ImageCache())
    assert good["pairs"] == bad["pairs"] == len(pairs) > 0
    assert good["reconstruction_psnr"] > 60 > 15 > bad["reconstruction_psnr"]
    assert good["reflectance_psnr"] > bad["reflectance_psnr"] + 10
    assert good["illumination_tv"] == 0 < bad["illumination_tv"]


def test_corrected_gradient_supervises_the_first_row_and_column() -> None:
    # texture along the top row and down the left column, as a net left free there would draw
    x = torch.full((1, 1, 16, 16), 0.5)
    x[..., 0, ::2] = 0.9
    x[..., ::2, 0] = 0.9
    for direction, edge in (("x", (0, slice(None))), ("y", (slice(None), 0))):
        official = losses.gradient(x, direction, official=True)[0, 0][edge]
        corrected = losses.gradient(x, direction, official=False)[0, 0][edge]
        assert float(official[2:-2].max()) == 0.0, "the official operator never sees the first row/column"
        assert float(corrected[2:-2].min()) > 0.5


def test_colour_term_sees_washed_out_colour_but_not_brightness() -> None:
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32) * 0.8 + 0.1
    grey = target.mean(dim=1, keepdim=True)
    washed = grey + 0.5 * (target - grey)  # half the chroma ("sepia")
    assert losses.colour_angle(target * 0.5, target).item() < 1e-5  # darker, same colour
    assert losses.colour_angle(washed, target).item() > 0.01
    plain = losses.restore_loss(washed, target)
    assert losses.restore_loss(washed, target, colour_weight=1.0).item() > plain.item()
    assert losses.restore_loss(washed, target, colour_weight=0.0).item() == plain.item()
