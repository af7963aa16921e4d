"""``kind enhance`` progress: a bar per tiled image and over a folder on a terminal, silent otherwise."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kind_cli import images as cli
from kind_serve.model import InferenceDefaults
from tests.bundles import random_kind_bundle


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _keep_the_default_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: True)


@pytest.fixture(scope="module")
def small_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_kind_bundle(tmp_path_factory, "test-random", InferenceDefaults(tile_size=128, tile_overlap=16))


def _photos(folder: Path, count: int, size: tuple[int, int] = (200, 140)) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def _run(monkeypatch, stderr: io.StringIO, *args: str) -> str:
    monkeypatch.setattr("sys.stderr", stderr)
    assert cli.main(["enhance", *args]) == 0
    return stderr.getvalue()


def test_a_tiled_image_and_a_folder_show_bars_with_an_eta_on_a_terminal(small_tiles, tmp_path, monkeypatch) -> None:
    photos = _photos(tmp_path / "in", 2)
    err = _run(monkeypatch, Terminal(), str(photos), "--out", str(tmp_path / "out"), "--checkpoint", str(small_tiles))
    assert "p0.png" in err and "tile" in err  # the per-image bar over its tiles
    assert "enhance" in err and "2/2" in err and "img" in err  # the bar over the folder
    assert "<" in err  # tqdm's elapsed<remaining: the ETA


def test_quiet_and_non_terminals_show_no_bars(small_tiles, tmp_path, monkeypatch) -> None:
    photos = _photos(tmp_path / "in", 2)
    common = [str(photos), "--checkpoint", str(small_tiles)]
    quiet = _run(monkeypatch, Terminal(), *common, "--out", str(tmp_path / "a"), "--quiet")
    piped = _run(monkeypatch, io.StringIO(), *common, "--out", str(tmp_path / "b"))
    for err in (quiet, piped):
        assert "tile" not in err and "%|" not in err
        assert "2 written" in err  # the summary stays


def test_a_device_error_names_the_command_without_a_usage_line(small_tiles, tmp_path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as info:
        cli.main(["enhance", str(_photos(tmp_path / "in", 1)), "--out", str(tmp_path), "--device", "cuda"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("kind enhance: error:") and "no CUDA device" in err
    assert "usage:" not in err
