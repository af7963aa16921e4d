"""KinD low-light enhancement in PyTorch: networks, pipeline, tiling and checkpoint bundles."""

from .adjust import IlluminationAdjustNet
from .bundle import Bundle, BundleError, load_bundle, read_manifest, save_bundle
from .convert import OfficialWeightsError, remap_official_state_dict
from .cpu import retain_freed_memory
from .decom import DecomNet, Decomposition
from .kind import Enhanced, KinD
from .pipeline import ALPHA_MAX, ALPHA_MIN, MODES, AlphaError, InferenceDefaults, parse_alpha
from .restore import RestorationNet

__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "MODES",
    "AlphaError",
    "Bundle",
    "BundleError",
    "DecomNet",
    "Decomposition",
    "Enhanced",
    "IlluminationAdjustNet",
    "InferenceDefaults",
    "KinD",
    "OfficialWeightsError",
    "RestorationNet",
    "load_bundle",
    "parse_alpha",
    "read_manifest",
    "remap_official_state_dict",
    "retain_freed_memory",
    "save_bundle",
]
