"""KinD low-light enhancement in PyTorch: networks, the enhancement recipe, tiling and checkpoint bundles.

Modules by topic: ``decom``/``restore``/``adjust``/``layers`` (the networks), ``kind`` (the three behind one
object), ``recipe`` (raw image → output, the path every front end runs), ``networks`` (what the recipe needs of
a model), ``defaults`` (the bundle's settings for the recipe), ``light`` (the light level α), ``normalise``,
``compose``, ``auto_alpha``, ``parts`` (what a new α reuses), ``multires`` (the fast path), ``tiling``,
``image`` (PIL/NumPy ↔ tensors), ``bundle`` (checkpoint format), ``convert`` (the authors' weights), ``cpu``
(allocator tuning). No web or CLI code.
"""

from .adjust import IlluminationAdjustNet
from .bundle import Bundle, BundleError, load_bundle, read_manifest, save_bundle
from .compose import MODES, Mode
from .convert import OfficialWeightsError, remap_official_state_dict
from .cpu import retain_freed_memory
from .decom import DecomNet, Decomposition
from .defaults import InferenceDefaults
from .kind import Enhanced, KinD
from .light import ALPHA_MAX, ALPHA_MIN, AUTO, AlphaError, LightLevel
from .restore import RestorationNet
from .tiling import TilingError, check_tiling

__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "AUTO",
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
    "LightLevel",
    "Mode",
    "OfficialWeightsError",
    "RestorationNet",
    "TilingError",
    "check_tiling",
    "load_bundle",
    "read_manifest",
    "remap_official_state_dict",
    "retain_freed_memory",
    "save_bundle",
]
