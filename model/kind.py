"""KinD: decomposition, restoration and illumination adjustment behind one object.

Zhang, Zhang, Guo, "Kindling the Darkness: A Practical Low-light Image Enhancer", ACM MM 2019
(arXiv:1905.04161). ``KinD`` owns the three networks, their construction (untrained, from a bundle, from
the authors' weights) and the per-stage API (``decompose``/``restore``/``adjust``); its whole-image methods
(``enhance``, ``enhance_tensor``, ``choose_alpha``) are the Python front end of :mod:`model.recipe`.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import recipe
from .adjust import IlluminationAdjustNet
from .bundle import Bundle, BundleError, load_bundle, save_bundle
from .compose import Mode
from .convert import read_official_arrays, remap_official_state_dict
from .decom import DecomNet, Decomposition
from .defaults import InferenceDefaults
from .image import from_tensor, to_tensor
from .layers import glorot_init
from .light import LightLevel
from .multires import Quality
from .restore import RestorationNet

UNTRAINED_SEED = 0


class Enhanced(NamedTuple):
    image: Image.Image
    alpha: float


class KinD(nn.Module):
    """The three KinD networks plus the inference defaults of the bundle they came from."""

    def __init__(self, defaults: InferenceDefaults | None = None, *, version: str = "untrained") -> None:
        super().__init__()
        self.decom = DecomNet()
        self.restoration = RestorationNet()
        self.adjustment = IlluminationAdjustNet()
        self.defaults = defaults or InferenceDefaults()
        self.version = version
        self.restoration_trained = True
        self.manifest: dict[str, Any] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_official(
        cls,
        *,
        decom: str | os.PathLike[str],
        illum: str | os.PathLike[str],
        restore: str | os.PathLike[str] | None = None,
    ) -> KinD:
        """The authors' released weights (npz export or TF checkpoint dir); restoration untrained unless given."""
        kind = cls(version="official-kind")
        for net, path, module in (("decom", decom, kind.decom), ("adjust", illum, kind.adjustment)):
            module.load_state_dict(remap_official_state_dict(read_official_arrays(path), net, module))
        if restore is not None:
            arrays = read_official_arrays(restore)
            kind.restoration.load_state_dict(remap_official_state_dict(arrays, "restore", kind.restoration))
        else:
            # a fixed seed makes the untrained net, and so outputs and auto α, the same on every run
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(UNTRAINED_SEED)
                glorot_init(kind.restoration)
            kind.restoration_trained = False
            kind.version = "official-kind+untrained-restoration"
        return kind.eval()

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | torch.device | None = None) -> KinD:
        """Load a verified checkpoint bundle (see :mod:`model.bundle`)."""
        bundle = load_bundle(path)
        kind = cls(InferenceDefaults.from_manifest(bundle.inference), version=bundle.version)
        for net, module in (("decom", kind.decom), ("restore", kind.restoration), ("adjust", kind.adjustment)):
            try:
                module.load_state_dict(bundle.state_dicts[net])
            except RuntimeError as exc:
                raise BundleError(f"{path}/{net}.safetensors: does not fit the {net} network ({exc})") from exc
        kind.restoration_trained = bool(bundle.training.get("restoration_trained", True))
        kind.manifest = {"provenance": bundle.provenance, "training": bundle.training, "metrics": bundle.metrics}
        kind.eval()
        return kind.prepare(device) if device is not None else kind

    def to_bundle(self, **sections: dict[str, Any]) -> Bundle:
        training = {"restoration_trained": self.restoration_trained, **sections.pop("training", {})}
        return Bundle(
            state_dicts={
                "decom": self.decom.state_dict(),
                "restore": self.restoration.state_dict(),
                "adjust": self.adjustment.state_dict(),
            },
            inference=asdict(self.defaults),
            training=training,
            version=self.version,
            **sections,
        )

    def save(self, path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32, **sections: Any) -> None:
        save_bundle(self.to_bundle(**sections), path, dtype=dtype)

    def prepare(self, device: str | torch.device = "cpu") -> KinD:
        """Eval mode on ``device``, channels-last (the fast layout for these convs on CPU and GPU)."""
        # torch's stubs omit Module.to's memory_format keyword
        return self.eval().to(torch.device(device), memory_format=torch.channels_last)  # type: ignore[call-overload]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- per-stage API: N×C×H×W float tensors in [0, 1] --------------------------------------------
    def decompose(self, image: torch.Tensor) -> Decomposition:
        """Reflectance N×3×H×W and illumination N×1×H×W of an already normalised image."""
        return self.decom(image)

    def restore(self, reflectance: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        """Denoised, colour-corrected reflectance R̂ (N×3×H×W)."""
        return self.restoration(reflectance, illumination)

    def adjust(self, illumination: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """Illumination brightened (α > 1) or darkened (α < 1); α is a float or N values."""
        alpha_t = torch.as_tensor(alpha, dtype=illumination.dtype, device=illumination.device)
        return self.adjustment(illumination, alpha_t.reshape(-1).expand(illumination.shape[0]))

    def forward(
        self,
        image: torch.Tensor,
        alpha: float | torch.Tensor,
        mode: Mode = "photo",
        span: torch.Tensor | float = 1.0,
    ) -> torch.Tensor:
        """Enhanced N×3×H×W output of a normalised batch (:func:`model.recipe.enhance_batch`)."""
        return recipe.enhance_batch(self, image, alpha, mode, span)

    # -- whole images: the Python front end of model.recipe -------------------------------------
    def choose_alpha(self, image: torch.Tensor, mode: Mode | None = None, span: torch.Tensor | float = 1.0) -> float:
        """Automatic light level for one normalised 1×3×H×W image (rule in :mod:`model.auto_alpha`)."""
        return recipe.choose_alpha(self, image, mode, span)

    def enhance_tensor(
        self,
        image: torch.Tensor,
        alpha: LightLevel | float | str | None = "auto",
        mode: Mode | None = None,
        *,
        tile_size: int | None = None,
        precision: str = "fp32",
        quality: Quality = "full",
    ) -> tuple[torch.Tensor, float]:
        """Enhance one raw 1×3×H×W image in [0, 1]; returns (output on CPU, α used).

        ``alpha``: "auto", a number in [ALPHA_MIN, ALPHA_MAX] or a :class:`~model.light.LightLevel`.
        Normalisation and α come from the whole image; images larger than ``tile_size`` run in
        overlapping tiles so memory is bounded by the tile size. ``quality="fast"``: the networks at half
        resolution on images above 2 MP (:mod:`model.multires`), 2–3× faster, softer fine texture.
        """
        light = LightLevel.parse(alpha)
        return recipe.enhance(self, image, light, mode, tile_size=tile_size, precision=precision, quality=quality)

    def enhance(
        self,
        image: Image.Image | np.ndarray,
        alpha: LightLevel | float | str | None = "auto",
        mode: Mode | None = None,
        **kwargs: Any,
    ) -> Enhanced:
        """Enhance a PIL image or uint8 H×W×3 array; EXIF orientation is applied to PIL input."""
        out, used = self.enhance_tensor(to_tensor(image), alpha, mode, **kwargs)
        return Enhanced(from_tensor(out), used)
