"""The three training losses against an independent NumPy transcription of the authors' formulas.

The reference below is written from ``docs/kind-reference.md`` §4 (not from ``training/losses.py``): on fixed
tensors every loss must equal the sum of its terms, and every term is large enough that dropping it, or
getting its weight wrong, moves the loss far past the tolerance (checked first, so the test cannot pass
vacuously on inputs where a term happens to be ~0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kind_serve.training import losses

RTOL = 1e-5
GRAY = np.array([0.2989, 0.5870, 0.1140])  # tf.image.rgb_to_grayscale, as the reference states


def ref_gradient(x: np.ndarray, direction: str) -> np.ndarray:
    """|2×2 difference| with TF SAME padding (a zero row and column at the bottom/right), min-max normalised
    over the whole batch tensor: the authors' operator, which the default (``official``) losses use."""
    p = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    # kernel [[0, 0], [-1, 1]] (x) and its transpose [[0, -1], [0, 1]] (y), as a cross-correlation
    before = p[..., 1:, :-1] if direction == "x" else p[..., :-1, 1:]
    g = np.abs(p[..., 1:, 1:] - before)
    return (g - g.min()) / (g.max() - g.min() + 1e-4)


def ref_gray(x: np.ndarray) -> np.ndarray:
    return np.einsum("nchw,c->nhw", x, GRAY)[:, None]


def ref_smoothness(illum: np.ndarray, image: np.ndarray) -> float:
    g = ref_gray(image)
    return sum(np.abs(ref_gradient(illum, d) / np.maximum(ref_gradient(g, d), 0.01)).mean() for d in ("x", "y"))


def ref_mutual(l_low: np.ndarray, l_high: np.ndarray) -> float:
    total = 0.0
    for d in ("x", "y"):
        m = ref_gradient(l_low, d) + ref_gradient(l_high, d)
        total = total + m * np.exp(-10 * m)
    return float(np.mean(total))


def ref_grad_mse(a: np.ndarray, b: np.ndarray) -> float:
    return sum(np.mean((ref_gradient(a, d) - ref_gradient(b, d)) ** 2) for d in ("x", "y"))


def ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """11×11 Gaussian window σ = 1.5, VALID, C1 = 1e-4, C2 = 9e-4, per channel then averaged."""
    t = np.arange(11) - 5
    k = np.exp(-(t**2) / (2 * 1.5**2))
    k /= k.sum()

    def blur(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[-2:]
        rows = sum(k[i] * x[..., i : h - 10 + i, :] for i in range(11))
        return sum(k[j] * rows[..., j : w - 10 + j] for j in range(11))

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 1e-4, 9e-4
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def decom_terms(r_l, l_l, r_h, l_h, s_l, s_h) -> dict[str, float]:  # noqa: ANN001
    return {
        "reconstruction (low)": np.abs(r_l * l_l - s_l).mean(),
        "reconstruction (high)": np.abs(r_h * l_h - s_h).mean(),
        "reflectance consistency": 0.01 * np.abs(r_l - r_h).mean(),
        "mutual consistency": 0.2 * ref_mutual(l_l, l_h),
        "smoothness (high)": 0.15 * ref_smoothness(l_h, s_h),
        "smoothness (low)": 0.15 * ref_smoothness(l_l, s_l),
    }


def adjust_terms(adjusted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {
        "mse": np.mean((adjusted - target) ** 2),
        "gradient mse": ref_grad_mse(adjusted, target),
    }


def restore_terms(restored: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {
        "mse": np.mean((restored - target) ** 2),
        "1 - ssim": 1 - ref_ssim(restored, target),
        "gradient mse": ref_grad_mse(ref_gray(restored), ref_gray(target)),
    }


def fixed(seed: int, *shape: int) -> torch.Tensor:
    """A smooth ramp plus texture: gradients of every size, so no term of any loss is ~0."""
    gen = torch.Generator().manual_seed(seed)
    h, w = shape[-2:]
    ramp = torch.linspace(0.1, 0.9, w).view(1, 1, 1, w) * torch.linspace(0.5, 1.0, h).view(1, 1, h, 1)
    return (0.6 * ramp + 0.4 * torch.rand(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)


def check(value: torch.Tensor, terms: dict[str, float]) -> None:
    total = sum(terms.values())
    for name, term in terms.items():
        # a dropped term or a wrong weight would move the loss by at least this much
        assert term > 10 * RTOL * total, f"{name} is too small on these inputs to be checked"
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(total, rel=RTOL), {k: round(float(v), 6) for k, v in terms.items()}


def test_decomposition_loss_is_the_sum_of_its_six_terms() -> None:
    r_l, r_h = fixed(1, 2, 3, 24, 20), fixed(2, 2, 3, 24, 20)
    l_l, l_h = fixed(3, 2, 1, 24, 20) * 0.3, fixed(4, 2, 1, 24, 20)
    s_l, s_h = fixed(5, 2, 3, 24, 20) * 0.2, fixed(6, 2, 3, 24, 20)
    value = losses.decom_loss(r_l, l_l, r_h, l_h, s_l, s_h)
    args = [t.numpy() for t in (r_l, l_l, r_h, l_h, s_l, s_h)]
    check(value, decom_terms(*args))


def test_adjustment_loss_is_mse_plus_gradient_mse() -> None:
    adjusted, target = fixed(7, 2, 1, 24, 20), fixed(8, 2, 1, 24, 20) ** 2
    value = losses.adjust_loss(adjusted, target)
    check(value, adjust_terms(adjusted.numpy(), target.numpy()))


def test_restoration_loss_is_mse_plus_ssim_plus_gradient_mse() -> None:
    target = fixed(9, 2, 3, 32, 28)
    restored = (target + 0.15 * fixed(10, 2, 3, 32, 28) - 0.05).clamp(0, 1)
    value = losses.restore_loss(restored, target)
    check(value, restore_terms(restored.numpy(), target.numpy()))
