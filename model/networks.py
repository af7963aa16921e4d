"""What the recipe needs of a model: the three per-stage calls, its device and its bundle's defaults.

:mod:`model.recipe` and :mod:`model.parts` are written against :class:`Networks`, so they never import
:class:`model.kind.KinD`, which is built on them; ``KinD`` satisfies the protocol.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .decom import Decomposition
from .defaults import InferenceDefaults


class Networks(Protocol):
    """KinD's per-stage API on N×C×H×W float tensors in [0, 1] (see :class:`model.kind.KinD`)."""

    defaults: InferenceDefaults

    @property
    def device(self) -> torch.device: ...

    def decompose(self, image: torch.Tensor) -> Decomposition: ...

    def restore(self, reflectance: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor: ...

    def adjust(self, illumination: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor: ...
