"""The three networks: parity with the authors' TensorFlow outputs, any image size, exact parameter counts,
and strict import of the official weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kind_serve.model import DecomNet, IlluminationAdjustNet, KinD, OfficialWeightsError, RestorationNet
from kind_serve.model.convert import read_official_arrays, remap_official_state_dict
from kind_serve.model.layers import conv_to_one_channel

REFERENCES = ("syn_chelsea_h301_w217", "syn_coffee_h7_w5_tiny")
TOLERANCE = 1e-5


def _nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


@pytest.fixture(scope="module")
def official_arrays(shared_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    folder = shared_dir / "official-kind"
    return {
        "decom": read_official_arrays(folder / "kind_decom.npz"),
        "adjust": read_official_arrays(folder / "kind_illum.npz"),
    }


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", REFERENCES)
def test_outputs_match_the_authors_tensorflow_code(shared_dir: Path, name: str, memory_format) -> None:
    folder = shared_dir / "official-kind"
    ref = np.load(folder / "reference" / f"{name}.npz")
    kind = KinD.from_official(decom=folder / "kind_decom.npz", illum=folder / "kind_illum.npz")
    kind = kind.to(memory_format=memory_format)
    with torch.inference_mode():
        r, l = kind.decompose(_nchw(ref["input"]).contiguous(memory_format=memory_format))
        assert (r - _nchw(ref["R"])).abs().max() < TOLERANCE
        assert (l - _nchw(ref["L"])).abs().max() < TOLERANCE
        l_tf = _nchw(ref["L"]).contiguous(memory_format=memory_format)
        for alpha in (1.0, 2.0, 5.0):
            adjusted = kind.adjust(l_tf, alpha)
            assert (adjusted - _nchw(ref[f"L_adj_{alpha}"])).abs().max() < TOLERANCE, alpha


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (5, 7), (2, 3), (17, 31), (33, 1), (64, 48)])
def test_every_image_size_works(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    kind = KinD().eval()
    x = torch.rand(2, 3, *size)
    with torch.inference_mode():
        r, l = kind.decompose(x)
        r_hat = kind.restore(r, l)
        l_hat = kind.adjust(l, torch.tensor([2.0, 5.0]))
        out = kind(x, torch.tensor([2.0, 5.0]), "photo")
    assert r.shape == r_hat.shape == out.shape == (2, 3, *size)
    assert l.shape == l_hat.shape == (2, 1, *size)
    for t in (r, l, r_hat, l_hat, out):
        assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1


def test_batch_items_are_independent() -> None:
    torch.manual_seed(0)
    kind = KinD().eval()
    x = torch.rand(3, 3, 21, 19)
    with torch.inference_mode():
        batched = kind(x, torch.tensor([1.0, 3.0, 8.0]), "photo")
        single = kind(x[1:2], 3.0, "photo")
    torch.testing.assert_close(batched[1:2], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (33, 1), (17, 31)])
def test_the_nine_tap_form_of_a_one_channel_conv_equals_the_conv(size: tuple[int, int]) -> None:
    """The adjustment net's last conv, as the CPU runs it in inference (``conv_to_one_channel``), is the 3×3
    SAME conv: every tap in its place, borders zero-padded, bias added; NCHW or channels-last; and under bf16
    within bf16's rounding."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 1, 3, padding=1)
    x = torch.randn(2, 32, *size)
    want = conv(x).detach()  # with autograd on: the conv itself
    with torch.inference_mode():
        got = conv_to_one_channel(conv, x)
        got_nhwc = conv_to_one_channel(conv, x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = conv_to_one_channel(conv, x)
    assert got.shape == want.shape == (2, 1, *size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_nhwc, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(low.float(), want, atol=0.03, rtol=0.01)


@pytest.mark.parametrize(
    ("net", "count"), [(DecomNet, 235_876), (RestorationNet, 7_760_739), (IlluminationAdjustNet, 19_393)]
)
def test_parameter_counts_match_the_authors_networks(net: type[torch.nn.Module], count: int) -> None:
    assert sum(p.numel() for p in net().parameters()) == count


def test_official_decomposition_is_deterministic_across_loads(shared_dir: Path) -> None:
    folder = shared_dir / "official-kind"
    a = KinD.from_official(decom=folder / "kind_decom.npz", illum=folder / "kind_illum.npz")
    b = KinD.from_official(decom=folder / "kind_decom.npz", illum=folder / "kind_illum.npz")
    assert not a.restoration_trained and "untrained" in a.version
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize(
    ("net", "change", "named"),
    [
        ("decom", "drop", "DecomNet/g_conv1_1/weights"),
        ("decom", "drop", "DecomNet/g_up_2/weights"),
        ("adjust", "drop", "Illumination_adjust_net/en_conv_4/biases"),
        ("decom", "extra", "DecomNet/g_conv11/weights"),
        ("adjust", "extra", "Illumination_adjust_net/en_conv_5/weights"),
        ("decom", "reshape", "DecomNet/l_conv1_4/weights"),
        ("adjust", "reshape", "Illumination_adjust_net/en_conv_2/weights"),
    ],
)
def test_official_import_names_the_offending_variable(official_arrays, net: str, change: str, named: str) -> None:
    arrays = dict(official_arrays[net])
    if change == "drop":
        del arrays[named]
    elif change == "extra":
        arrays[named] = np.zeros((3, 3, 32, 32), np.float32)
    else:
        kh, kw, cin, cout = arrays[named].shape
        arrays[named] = np.zeros((kh, kw, cin + 1, cout), np.float32)  # one input channel too many
    module = DecomNet() if net == "decom" else IlluminationAdjustNet()
    with pytest.raises(OfficialWeightsError, match=named):
        remap_official_state_dict(arrays, net, module)


def test_from_official_refuses_a_bad_npz_file(official_arrays, tmp_path: Path, shared_dir: Path) -> None:
    arrays = dict(official_arrays["decom"])
    del arrays["DecomNet/g_conv9_1/biases"]
    bad = tmp_path / "decom.npz"
    np.savez(bad, **arrays)
    illum = shared_dir / "official-kind" / "kind_illum.npz"
    with pytest.raises(OfficialWeightsError, match="DecomNet/g_conv9_1/biases"):
        KinD.from_official(decom=bad, illum=illum)
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        KinD.from_official(decom=tmp_path / "nowhere.npz", illum=illum)
    # swapped files: the adjustment arrays do not fit the decomposition net
    with pytest.raises(OfficialWeightsError, match="Illumination_adjust_net"):
        KinD.from_official(decom=illum, illum=illum)
