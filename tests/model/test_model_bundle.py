"""Checkpoint bundles: round trip in fp32 and fp16, and refusal of anything corrupt or mismatched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kind_serve.model import BundleError, InferenceDefaults, KinD, read_manifest
from kind_serve.model.bundle import FORMAT_VERSION


def _same_weights(a: KinD, b: KinD) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_round_trip_fp32_keeps_weights_defaults_and_manifest(tmp_path: Path) -> None:
    torch.manual_seed(1)
    kind = KinD(InferenceDefaults(mode="paper", exposure_target=0.5, tile_size=512, tile_overlap=32), version="v7")
    kind.save(tmp_path / "b", provenance={"data": "SICE"}, metrics={"psnr": 20.1})
    loaded = KinD.load(tmp_path / "b")
    assert _same_weights(kind, loaded)
    assert loaded.defaults == kind.defaults
    assert loaded.version == "v7"
    assert loaded.manifest["provenance"] == {"data": "SICE"} and loaded.manifest["metrics"] == {"psnr": 20.1}
    manifest = read_manifest(tmp_path / "b")
    assert manifest["format_version"] == FORMAT_VERSION
    for net in ("decom", "restore", "adjust"):
        data = (tmp_path / "b" / f"{net}.safetensors").read_bytes()
        assert manifest["files"][net]["sha256"] == hashlib.sha256(data).hexdigest()


def test_round_trip_fp16_halves_the_files_and_keeps_the_output(tmp_path: Path) -> None:
    torch.manual_seed(2)
    kind = KinD().eval()
    kind.save(tmp_path / "fp32")
    kind.save(tmp_path / "fp16", dtype=torch.float16)
    size = (tmp_path / "fp16" / "restore.safetensors").stat().st_size
    assert size < 0.55 * (tmp_path / "fp32" / "restore.safetensors").stat().st_size
    loaded = KinD.load(tmp_path / "fp16", device="cpu")
    for (name, p), q in zip(kind.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert q.dtype == torch.float32
        assert torch.equal(p.half().float(), q), name
    x = torch.rand(1, 3, 40, 56)
    with torch.inference_mode():
        assert (kind(x, 4.0) - loaded(x, 4.0)).abs().max() < 5e-3


def test_restoration_trained_flag_survives_the_round_trip(tmp_path: Path, official_kind: KinD) -> None:
    official_kind.save(tmp_path / "b")
    loaded = KinD.load(tmp_path / "b")
    assert loaded.restoration_trained is False
    assert _same_weights(official_kind, loaded)


@pytest.fixture()
def bundle(random_bundle: Path, tmp_path: Path) -> Path:
    path = tmp_path / "bundle"
    shutil.copytree(random_bundle, path)
    return path


def _edit_manifest(bundle: Path, edit) -> None:  # noqa: ANN001 - callable(dict) -> None
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_the_intact_fixture_loads(bundle: Path) -> None:
    assert KinD.load(bundle).version == "random-test"


def test_a_flipped_byte_is_refused(bundle: Path) -> None:
    path = bundle / "restore.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"restore\.safetensors.*sha256"):
        KinD.load(bundle)


def test_a_truncated_file_is_refused(bundle: Path) -> None:
    path = bundle / "decom.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleError, match=r"decom\.safetensors"):
        KinD.load(bundle)


def test_a_deleted_file_is_refused(bundle: Path) -> None:
    (bundle / "adjust.safetensors").unlink()
    with pytest.raises(BundleError, match=r"adjust\.safetensors.*missing"):
        KinD.load(bundle)


def test_shapes_that_differ_from_the_manifest_are_refused(bundle: Path) -> None:
    def edit(manifest: dict) -> None:
        shapes = manifest["files"]["adjust"]["shapes"]
        shapes["body.0.0.weight"] = [32, 3, 3, 3]

    _edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=r"adjust\.safetensors.*shapes"):
        KinD.load(bundle)


def test_consistent_weights_that_do_not_fit_the_network_are_refused(bundle: Path) -> None:
    # a self-consistent file (hash and shapes agree with the manifest) for a different architecture
    state = {"body.0.0.weight": torch.zeros(16, 2, 3, 3)}
    path = bundle / "adjust.safetensors"
    save_file(state, str(path))

    def edit(manifest: dict) -> None:
        manifest["files"]["adjust"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest["files"]["adjust"]["shapes"] = {"body.0.0.weight": [16, 2, 3, 3]}

    _edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=r"adjust\.safetensors.*does not fit"):
        KinD.load(bundle)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("not json", "not valid JSON"),
        ("no files", "'files'"),
        ("wrong format", "not a kind-bundle manifest"),
        ("version 2", "format_version 2"),
        ("version missing", "format_version None"),
        ("no manifest", "no manifest.json"),
    ],
)
def test_a_bad_manifest_is_refused(bundle: Path, breakage: str, message: str) -> None:
    manifest_path = bundle / "manifest.json"
    if breakage == "not json":
        manifest_path.write_text(manifest_path.read_text()[:-20])
    elif breakage == "no manifest":
        manifest_path.unlink()
    else:
        edits = {
            "no files": lambda m: m.pop("files"),
            "wrong format": lambda m: m.update(format="something-else"),
            "version 2": lambda m: m.update(format_version=2),
            "version missing": lambda m: m.pop("format_version"),
        }
        _edit_manifest(bundle, edits[breakage])
    with pytest.raises(BundleError, match="manifest.json") as info:
        KinD.load(bundle)
    assert message in str(info.value)


def test_a_missing_bundle_folder_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no manifest.json"):
        KinD.load(tmp_path / "nothing-here")
