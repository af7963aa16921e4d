"""``kind export --format onnx``: the file ONNX Runtime runs gives the PyTorch pipeline's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kind_cli import main as kind_main
from kind_serve.model import KinD
from kind_serve.model.image import to_tensor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.timeout(1200)  # the export alone takes ~25 s on an idle 2-core machine, minutes when loaded


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[KinD, Path]:
    """A random-weights bundle exported once through the command line (the export takes ~20 s)."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(3)
    KinD(version="onnx-test").save(root / "bundle")
    assert kind_main(["export", str(root / "bundle"), "--format", "onnx", "--out", str(root / "kind.onnx")]) == 0
    return KinD.load(root / "bundle"), root / "kind.onnx"


def _run(path: Path, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["enhanced"], {"image": image, "alpha": alpha})[0]


def test_onnx_matches_enhance_on_a_photo_sized_image(exported: tuple[KinD, Path]) -> None:
    kind, path = exported
    rng = np.random.default_rng(0)
    photo = (rng.random((75, 113, 3)) ** 2 * 90).astype(np.uint8)  # dark, odd-sized: pooling pads both sides
    raw = to_tensor(photo)
    expected, _ = kind.enhance_tensor(raw, 4.0)
    got = _run(path, raw.numpy(), np.array([4.0], np.float32))
    assert got.shape == (1, 3, 75, 113)
    assert np.abs(got - expected.numpy()).max() <= 1e-4


def test_batch_and_size_are_dynamic_with_one_alpha_per_image(exported: tuple[KinD, Path]) -> None:
    kind, path = exported
    images = torch.rand(1, 3, 40, 24).mul(0.4).expand(3, -1, -1, -1).contiguous()
    alphas = torch.tensor([1.0, 3.0, 9.0])
    got = _run(path, images.numpy(), alphas.numpy())
    for i in range(3):
        expected, _ = kind.enhance_tensor(images[i : i + 1], float(alphas[i]))
        assert np.abs(got[i] - expected[0].numpy()).max() <= 1e-4
    # the same image at three levels: α reaches the graph as an input, not as a constant baked in
    assert np.abs(got[2] - got[0]).max() > 1e-2


def test_manifest_travels_in_metadata(exported: tuple[KinD, Path]) -> None:
    kind, path = exported
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["kind.version"] == "onnx-test"
    assert meta["kind.mode"] == kind.defaults.mode
    assert int(meta["kind.tile_size"]) == kind.defaults.tile_size
    assert not list(path.parent.glob("*.data"))  # one self-contained file


def test_bad_bundle_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kind_main(["export", str(tmp_path), "--format=onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
