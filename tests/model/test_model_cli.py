"""``kind enhance`` / ``kind decompose`` on real photos, folders, broken files and bad arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kind_cli import images as cli
from kind_cli import main as kind_main

FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}


@pytest.fixture(autouse=True)
def _keep_the_default_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    # the CLI tunes malloc process-wide (tested in test_model_cpu.py); keep the shared pytest process untouched
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: True)


def _write(path: Path, size: tuple[int, int] = (48, 32), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 90, (size[1], size[0], 3), dtype=np.uint8)  # dark
    Image.fromarray(arr).save(path, format=FORMATS[path.suffix.lstrip(".")])
    return path


def test_enhance_real_photos_goes_past_a_corrupt_file(shared_dir: Path, tmp_path: Path, capsys) -> None:
    dicm = shared_dir / "datasets" / "real-lowlight" / "DICM"
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((dicm / "03.jpg").read_bytes()[:2000])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    inputs = [dicm / "01.jpg", garbage, truncated, dicm / "02.jpg"]
    out = tmp_path / "out"
    official = f"official:{shared_dir / 'official-kind'}"
    code = cli.main(["enhance", *map(str, inputs), "--out", str(out), "--checkpoint", official])
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["01.png", "02.png"]
    for name in ("01", "02"):
        with Image.open(dicm / f"{name}.jpg") as src, Image.open(out / f"{name}.png") as dst:
            assert dst.size == src.size and dst.mode == "RGB"
    assert "UNTRAINED" in captured.err
    assert "garbage.png: cannot read image" in captured.err
    assert "truncated.jpg: cannot read image" in captured.err
    assert "2 written" in captured.err and "2 failed" in captured.err
    assert captured.out.count("alpha=") == 2  # the α used is reported per image


def test_enhance_a_folder_of_every_format(random_bundle: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, ext in enumerate(FORMATS):
        _write(folder / f"img_{ext}.{ext}", seed=i)
    (folder / "notes.txt").write_text("not an image: ignored in folders")
    out = tmp_path / "out"
    code = kind_main(["enhance", str(folder), "--out", str(out), "--checkpoint", str(random_bundle), "--alpha", "3"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"img_{ext}.png" for ext in FORMATS)
    assert capsys.readouterr().out.count("alpha=3.000") == len(FORMATS)


def test_enhance_honours_exif_orientation(random_bundle: Path, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to view
    src = tmp_path / "rotated.jpg"
    Image.new("RGB", (60, 20), (20, 30, 40)).save(src, exif=exif)
    assert cli.main(["enhance", str(src), "--out", str(tmp_path), "--checkpoint", str(random_bundle)]) == 0
    with Image.open(tmp_path / "rotated.png") as out:
        assert out.size == (20, 60)


def test_enhance_tiles_large_inputs(random_bundle: Path, tmp_path: Path) -> None:
    src = _write(tmp_path / "wide.png", size=(300, 140))
    args = ["enhance", str(src), "--out", str(tmp_path / "o"), "--checkpoint", str(random_bundle)]
    assert cli.main([*args, "--tile-size", "160", "--mode", "paper", "--precision", "bf16"]) == 0
    with Image.open(tmp_path / "o" / "wide.png") as out:
        assert out.size == (300, 140)


def test_clashing_output_names_are_not_overwritten(random_bundle: Path, tmp_path: Path, capsys) -> None:
    a, b = _write(tmp_path / "same.png", seed=1), _write(tmp_path / "same.jpg", seed=2)
    code = cli.main(["enhance", str(a), str(b), "--out", str(tmp_path / "o"), "--checkpoint", str(random_bundle)])
    assert code == 1
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["same.png"]
    assert "clashes" in capsys.readouterr().err


def test_decompose_writes_reflectance_and_illumination(random_bundle: Path, tmp_path: Path) -> None:
    src = _write(tmp_path / "scene.png", size=(50, 30))
    base = ["decompose", str(src), "--checkpoint", str(random_bundle)]
    assert cli.main([*base, "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["scene_L.png", "scene_R.png"]
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--alpha", "4", "--tile-size", "129"]) == 0
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["scene_L.png", "scene_L_adj.png", "scene_R.png"]
    modes = {}
    for name in names:
        with Image.open(tmp_path / "b" / name) as image:
            assert image.size == (50, 30)
            modes[name] = image.mode
    assert modes == {"scene_R.png": "RGB", "scene_L.png": "L", "scene_L_adj.png": "L"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alpha", "0"], "alpha must be"),
        (["--alpha", "bright"], "alpha must be"),
        (["--mode", "poster"], "invalid choice"),
        (["--tile-size", "32"], "at least 64"),
        (["--tile-size", "72"], "use a tile size of at least 128 or an overlap of at most 36"),
        (["--precision", "int8"], "invalid choice"),
    ],
)
def test_bad_options_exit_2_with_a_reason(random_bundle: Path, tmp_path: Path, capsys, extra, message) -> None:
    src = _write(tmp_path / "x.png")
    with pytest.raises(SystemExit) as info:
        cli.main(["enhance", str(src), "--out", str(tmp_path / "o"), "--checkpoint", str(random_bundle), *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_corrupt_checkpoint_exits_2_naming_the_file(random_bundle: Path, tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for f in random_bundle.iterdir():
        (bundle / f.name).write_bytes(f.read_bytes())
    (bundle / "decom.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(SystemExit) as info:
        cli.main(["enhance", str(_write(tmp_path / "x.png")), "--out", str(tmp_path), "--checkpoint", str(bundle)])
    assert info.value.code == 2
    assert "decom.safetensors" in capsys.readouterr().err


def test_default_checkpoint_falls_back_to_official_weights_with_a_warning(
    shared_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(cli, "DEFAULT_BUNDLE", tmp_path / "no-bundle")
    monkeypatch.setattr(cli, "DEFAULT_OFFICIAL", shared_dir / "official-kind")
    assert cli.main(["enhance", str(_write(tmp_path / "x.png")), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "no checkpoint bundle" in err and "restoration net is UNTRAINED" in err


def test_default_checkpoint_is_the_shipped_bundle(random_bundle: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "DEFAULT_BUNDLE", random_bundle)
    monkeypatch.setattr(cli, "DEFAULT_OFFICIAL", tmp_path / "no-official")
    assert cli.main(["enhance", str(_write(tmp_path / "x.png")), "--out", str(tmp_path / "o")]) == 0
    assert "WARNING" not in capsys.readouterr().err
    monkeypatch.setattr(cli, "DEFAULT_BUNDLE", tmp_path / "no-bundle")
    with pytest.raises(SystemExit):
        cli.main(["enhance", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")])
    assert "pass --checkpoint" in capsys.readouterr().err


def test_nothing_to_do_is_an_error(random_bundle: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty"), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")]
    assert cli.main(["enhance", *args, "--checkpoint", str(random_bundle)]) == 1
    err = capsys.readouterr().err
    assert "missing.jpg: no such file or folder" in err and "no images" in err


def test_cuda_without_a_gpu_is_a_clear_error(random_bundle: Path, tmp_path: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        cli.main(["enhance", str(_write(tmp_path / "x.png")), "--out", str(tmp_path), "--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


def test_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["enhance", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--out", "--alpha", "--mode", "--checkpoint", "--device", "--tile-size", "--precision"):
        assert option in out


def test_a_bundle_of_untrained_networks_is_flagged(tmp_path: Path, capsys) -> None:
    from kind_serve.model import KinD

    KinD().save(tmp_path / "fresh")  # version "untrained": saved straight from initialisation
    src = _write(tmp_path / "x.png")
    assert cli.main(["enhance", str(src), "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "fresh")]) == 0
    assert "randomly initialised" in capsys.readouterr().err


def test_an_alpha_bracket_runs_the_networks_once(
    random_bundle: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--alpha 2,auto,8`` writes one PNG per level, each the single-α output, from one decomposition."""
    from kind_serve.model import parts as model_parts
    from kind_serve.model import recipe

    src = _write(tmp_path / "x.png", (200, 140))
    args = [str(src), "--checkpoint", str(random_bundle), "--tile-size", "128", "--precision", "fp32"]
    runs = []
    real = model_parts.parts_batch
    monkeypatch.setattr(recipe, "parts_batch", lambda *a: runs.append(1) or real(*a))
    assert cli.main(["enhance", *args, "--out", str(tmp_path / "b"), "--alpha", "2,auto,8,2"]) == 0
    tiles = len(runs)
    assert tiles > 1  # 200×140 in 128-px tiles: tiled, and each tile once for the whole bracket
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(names) == 3 and "x_alpha2.png" in names and "x_alpha8.png" in names and "x_alphaauto.png" in names
    assert capsys.readouterr().out.count("alpha=") == 3
    for level in ("2", "8"):
        assert cli.main(["enhance", *args, "--out", str(tmp_path / level), "--alpha", level]) == 0
        single = np.asarray(Image.open(tmp_path / level / "x.png"), dtype=np.int16)
        bracket = np.asarray(Image.open(tmp_path / "b" / f"x_alpha{level}.png"), dtype=np.int16)
        assert np.abs(single - bracket).max() <= 1
    assert len(runs) == 3 * tiles
