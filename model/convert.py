"""Import of the authors' released TensorFlow weights (``zhangyhuaee/KinD``).

``remap_official_state_dict`` is pure: TF variable name → array in, PyTorch state dict out. It is strict:
a missing, unexpected or mis-shaped variable raises :class:`OfficialWeightsError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


class OfficialWeightsError(ValueError):
    """The official weights do not fit the network (missing, extra or mis-shaped variables)."""


def _conv(tf: str, pt: str) -> dict[str, str]:
    """TF conv layer ``tf``'s variables (``weights``, ``biases``) → PyTorch module ``pt``'s (``weight``, ``bias``)."""
    return {f"{tf}/weights": f"{pt}.weight", f"{tf}/biases": f"{pt}.bias"}


def _decom_names() -> dict[str, str]:
    convs = {
        "g_conv1_1": "conv1.0",
        "g_conv2_1": "conv2.0",
        "g_conv3_1": "conv3.0",
        "g_conv8_1": "conv8.0",
        "g_conv9_1": "conv9.0",
        "g_conv10": "to_reflectance",
        "l_conv1_2": "illum_conv.0",
        "l_conv1_4": "to_illumination",
    }
    names: dict[str, str] = {}
    for tf, pt in convs.items():
        names.update(_conv(f"DecomNet/{tf}", pt))
    names["DecomNet/g_up_1/weights"] = "up8.up.weight"
    names["DecomNet/g_up_2/weights"] = "up9.up.weight"
    return names


def _restore_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for level in range(1, 10):
        block = f"encoder.{level - 1}" if level <= 5 else f"decoder.{level - 6}"
        for j in (1, 2):
            names.update(_conv(f"Restoration_net/de_conv{level}_{j}", f"{block}.{j - 1}.0"))
    for level in range(6, 10):
        names[f"Restoration_net/up_{level}/weights"] = f"ups.{level - 6}.up.weight"
    names.update(_conv("Restoration_net/de_conv10", "to_reflectance"))
    return names


def _adjust_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for i in range(1, 5):
        names.update(_conv(f"Illumination_adjust_net/en_conv_{i}", f"body.{i - 1}.0" if i < 4 else "to_illumination"))
    return names


TF_NAMES = {"decom": _decom_names(), "restore": _restore_names(), "adjust": _adjust_names()}


def remap_official_state_dict(arrays: Mapping[str, np.ndarray], net: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map TF variables of one net (``"decom"``, ``"restore"`` or ``"adjust"``) onto ``model``'s parameters."""
    if net not in TF_NAMES:
        raise ValueError(f"unknown net {net!r}; expected one of {sorted(TF_NAMES)}")
    names = TF_NAMES[net]
    missing = sorted(set(names) - set(arrays))
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise OfficialWeightsError(f"{net}: missing TF variables {missing}, unexpected TF variables {extra}")
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for tf_name, pt_name in names.items():
        value = np.asarray(arrays[tf_name], dtype=np.float32)
        # conv [kh, kw, in, out] and conv-transpose [kh, kw, out, in] both map with the same transpose
        tensor = torch.from_numpy(value.transpose(3, 2, 0, 1).copy() if value.ndim == 4 else value.copy())
        if tensor.shape != expected[pt_name].shape:
            raise OfficialWeightsError(
                f"{net}: TF variable {tf_name} has shape {tuple(value.shape)}, which does not fit "
                f"{pt_name} {tuple(expected[pt_name].shape)}"
            )
        state[pt_name] = tensor
    return state


def read_official_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the authors' variables from an ``.npz`` export, or from a TF checkpoint directory if TF is installed."""
    path = os.fspath(path)
    if os.path.isdir(path):
        try:
            import tensorflow as tf  # type: ignore[import-not-found]
        except ImportError as exc:
            raise OfficialWeightsError(
                f"{path} is a TensorFlow checkpoint directory; install tensorflow to read it, "
                "or export it to .npz with tf.train.load_checkpoint"
            ) from exc
        reader = tf.train.load_checkpoint(path)
        known = {name for table in TF_NAMES.values() for name in table}
        # optimizer slots (…/Adam, beta1_power) live in the same checkpoint; keep only the net's variables
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name in known}
    if not os.path.exists(path):
        raise FileNotFoundError(f"official weights not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
