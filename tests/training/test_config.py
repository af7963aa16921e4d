"""Config choices are checked when the config loads, with the key named — not at the first batch that uses them."""

from __future__ import annotations

import pytest

from kind_serve.training.config import load_config


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("noise.stretch=noisy", "NoiseConfig.stretch"),
        ("gradient=sobel", "TrainConfig.gradient"),
        ("stages.restore.gradient=sobel", "StageConfig.gradient"),
        ("data_format=coco", "TrainConfig.data_format"),
    ],
)
def test_a_misspelt_choice_fails_at_load_naming_the_key_and_the_choices(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key}: must be one of \[") as info:
        load_config(None, [override])
    assert repr(override.split("=")[1]) in str(info.value)


def test_valid_choices_load() -> None:
    cfg = load_config(None, ["noise.stretch=degraded", "gradient=corrected", "stages.restore.gradient=official"])
    assert cfg.noise.stretch == "degraded"
    assert cfg.stages["restore"].gradient == "official"
