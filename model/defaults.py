"""The inference settings a bundle stores with its weights (the manifest's ``inference`` section).

Beneath everything but the output modes' type: :class:`model.kind.KinD` carries them, :mod:`model.recipe`
reads them, training writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .compose import Mode


@dataclass(frozen=True)
class InferenceDefaults:
    """Inference settings stored in a bundle's manifest (``inference`` section)."""

    mode: Mode = "photo"
    exposure_target: float = 0.45
    max_clipped: float = 0.05
    tile_size: int = 768
    tile_overlap: int = 64

    @classmethod
    def from_manifest(cls, inference: dict[str, Any]) -> InferenceDefaults:
        """The defaults of a manifest's ``inference`` section; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in inference.items() if k in known})
