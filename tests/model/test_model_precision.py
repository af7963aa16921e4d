"""precision=auto follows the hardware; a forced precision the device emulates comes with a warning."""

from __future__ import annotations

import pytest
import torch

from kind_serve.model import precision
from kind_serve.model.precision import choose_precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_has(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has exactly the named probes (PyTorch's cpuinfo checks)."""

    def set_flags(*names: str) -> None:
        monkeypatch.setattr(precision, "_cpu_probe", lambda name: name in names)

    return set_flags


def test_auto_is_bf16_only_on_cpus_with_bf16_instructions(cpu_has) -> None:
    cpu_has("_is_avx512_bf16_supported")
    assert choose_precision("auto", CPU).precision == "bf16"
    cpu_has("_is_amx_tile_supported")
    assert choose_precision("auto", CPU).precision == "bf16"
    cpu_has()  # AVX2 only
    assert choose_precision("auto", CPU) == precision.PrecisionChoice("fp32")


def test_forcing_an_emulated_precision_runs_it_and_warns(cpu_has) -> None:
    cpu_has()
    choice = choose_precision("bf16", CPU)
    assert choice.precision == "bf16"
    assert choice.warning and "slower than fp32" in choice.warning and "precision=auto" in choice.warning
    assert choose_precision("fp32", CPU).warning is None
    assert choose_precision("fp16", CPU).warning  # no AMX-FP16 either


def test_native_precision_has_no_warning(cpu_has) -> None:
    cpu_has("_is_avx512_bf16_supported")
    assert choose_precision("bf16", CPU).warning is None


def test_gpus_get_fp16_with_tensor_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert choose_precision("auto", gpu) == precision.PrecisionChoice("fp16")
    assert choose_precision("bf16", gpu).warning is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))  # Pascal
    assert choose_precision("auto", gpu).precision == "fp32"
    assert choose_precision("fp16", gpu).warning


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="auto"):
        choose_precision("int4", CPU)


def test_kind_enhance_warns_about_an_emulated_precision(cpu_has, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from PIL import Image

    from kind_cli.images import main

    cpu_has()
    Image.fromarray((np.random.default_rng(0).random((24, 32, 3)) * 60).astype(np.uint8)).save(tmp_path / "a.png")
    assert main(["enhance", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--precision", "bf16"]) == 0
    assert "warning: precision bf16 on cpu" in capsys.readouterr().err
    assert (tmp_path / "o" / "a.png").is_file()


def test_kind_enhance_defaults_to_the_precision_the_cpu_runs_fastest(
    cpu_has, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import numpy as np
    from PIL import Image

    from kind_cli import images
    from kind_serve.model import recipe

    used: list[str] = []
    real = recipe.compute_parts  # the networks' run, where the precision counts

    def spy(*args, **kwargs):
        used.append(kwargs["precision"])
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "compute_parts", spy)
    Image.fromarray((np.random.default_rng(0).random((24, 32, 3)) * 60).astype(np.uint8)).save(tmp_path / "a.png")
    for flags, expected in ((("_is_avx512_bf16_supported",), "bf16"), ((), "fp32")):
        cpu_has(*flags)
        assert images.main(["enhance", str(tmp_path / "a.png"), "--out", str(tmp_path / expected)]) == 0
        assert used[-1] == expected
