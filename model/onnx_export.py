"""ONNX export of the KinD pipeline, for serving with ONNX Runtime, Triton or any other ONNX runtime.

The exported graph is the whole per-image recipe at a given light level: the min-max stretch of each
image (:func:`model.normalise.normalise`), decomposition and restoration on the image padded to the canvas every front
end uses (:func:`model.tiling.pad_to_canvas`) and cropped back, then adjustment and the output composition of
the bundle's mode from those parts (:mod:`model.parts`), as :func:`model.recipe.enhance` runs them. Inputs and output (float32, NCHW, values in [0, 1]):

- ``image``: N×3×H×W raw RGB;
- ``alpha``: N light levels, one per image, in [``ALPHA_MIN``, ``ALPHA_MAX``];
- ``enhanced``: N×3×H×W.

Batch, height and width are dynamic (any H×W, 1×1 included, as in PyTorch). Not in the graph: the automatic
light level (a search over α on a preview) and tiling of large images; ``docs/onnx.md`` says how a caller
reproduces them. The bundle's version and inference defaults travel in the model's metadata (``kind.*`` keys).

Needs the ``onnx`` extra (``onnx``, ``onnxscript``; ``onnxruntime`` for :func:`check_onnx`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .compose import Mode, check_mode
from .kind import KinD
from .light import ALPHA_MAX, ALPHA_MIN
from .normalise import normalise
from .parts import parts_batch, photo_maps, relight_batch
from .tiling import pad_to_canvas

INPUTS = ("image", "alpha")
OUTPUT = "enhanced"
OPSET = 18
PARITY_TOLERANCE = 1e-4  # max |ONNX − PyTorch| on [0, 1] outputs that check_onnx accepts


class ExportError(RuntimeError):
    """The exported graph does not reproduce the PyTorch pipeline."""


class MissingToolchain(ExportError):
    """A package the export or the check needs is not installed."""


class EnhancePipeline(nn.Module):
    """Raw images and per-image α → enhanced images: the graph :func:`export_onnx` writes."""

    def __init__(self, kind: KinD, mode: Mode) -> None:
        super().__init__()
        self.kind = kind
        self.mode = check_mode(mode)

    def forward(self, image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        s, span = normalise(image)
        # the networks run on the canvas every front end uses (sides rounded up by edge replication)
        networks = parts_batch(self.kind, pad_to_canvas(s))[..., : image.shape[-2], : image.shape[-1]]
        maps = torch.cat([s, networks, photo_maps(networks, span)], dim=1)
        return relight_batch(self.kind, maps, alpha, self.mode, span)


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise MissingToolchain(f"ONNX export needs {module!r}: pip install 'kind-serve[onnx]'") from None


def export_onnx(
    kind: KinD,
    path: str | os.PathLike[str],
    *,
    mode: Mode | None = None,
    opset: int = OPSET,
) -> Path:
    """Write ``kind``'s pipeline (mode: the bundle's unless given) as one self-contained ONNX file."""
    _require("onnxscript")
    mode = check_mode(mode or kind.defaults.mode)
    # a private copy: the caller's model keeps its device, dtype and channels-last layout
    net = copy.deepcopy(kind).float().to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    graph = EnhancePipeline(net, mode).eval()
    batch = height = width = torch.export.Dim.AUTO  # named Dims trip the solver on the canvas padding
    # an example with batch 2 and odd sides: export must not specialise on 1 or on even shapes
    example = (torch.rand(2, 3, 67, 91) * 0.3, torch.tensor([2.0, 5.0]))
    program = torch.onnx.export(
        graph,
        example,
        dynamo=True,
        input_names=list(INPUTS),
        output_names=[OUTPUT],
        dynamic_shapes={"image": {0: batch, 2: height, 3: width}, "alpha": {0: batch}},
        opset_version=opset,
        verbose=False,
    )
    if program is None:  # only the legacy exporter returns None
        raise ExportError("torch.onnx.export returned no program")
    meta = {
        "kind.version": kind.version,
        "kind.mode": mode,
        "kind.alpha_range": f"{ALPHA_MIN},{ALPHA_MAX}",
        **{f"kind.{k}": str(v) for k, v in asdict(kind.defaults).items() if k != "mode"},
    }
    program.model.metadata_props.update(meta)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out), external_data=False)  # ~32 MB of weights: well under protobuf's 2 GB limit
    return out


def check_onnx(
    kind: KinD,
    path: str | os.PathLike[str],
    *,
    mode: Mode | None = None,
    shapes: tuple[tuple[int, int, int], ...] = ((1, 48, 80), (2, 33, 57)),
    seed: int = 0,
) -> float:
    """Largest |ONNX Runtime − PyTorch| over random dark images of ``shapes`` (N, H, W); raises past tolerance."""
    _require("onnxruntime")
    import onnxruntime as ort

    mode = check_mode(mode or kind.defaults.mode)
    reference = EnhancePipeline(copy.deepcopy(kind).float().to("cpu"), mode).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n, h, w in shapes:
        image = torch.rand(n, 3, h, w, generator=generator) * 0.3
        alpha = torch.linspace(1.5, 8.0, n)
        with torch.inference_mode():
            expected = reference(image, alpha).numpy()
        (got,) = session.run([OUTPUT], {"image": image.numpy(), "alpha": alpha.numpy()})
        worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE:.0e})")
    return worst
