"""The autocast precision each device runs fastest, and the ones it only emulates.

``auto`` picks per device:

- CUDA: fp16 on GPUs with tensor cores (compute capability 7.0 and up), fp32 on older ones. fp16 rather than
  bf16: both run at the same tensor-core rate, and fp16 keeps 3 more mantissa bits (this network's
  activations stay far below fp16's range);
- CPU: bf16 where the CPU has bf16 instructions (AVX-512-BF16 or AMX), fp32 elsewhere. Without them oneDNN
  converts every bf16 operand in software: several times slower than fp32 (``docs/performance.md``).

A precision forced on a device that emulates it still runs, with a warning for the log and the readiness
probe (:class:`PrecisionChoice`). The CPU checks are PyTorch's own (cpuinfo), the same ones oneDNN uses to
pick its kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .recipe import PRECISIONS

SETTINGS = ("auto", *PRECISIONS)
TENSOR_CORES = (7, 0)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a device will run and, when the user forced a slow one, why it is slow."""

    precision: str
    warning: str | None = None


def _cpu_probe(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)  # private helpers (torch ≥ 2.1): absent means "not known to have it"
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def cpu_native(precision: str) -> bool:
    """Whether this CPU computes ``precision`` in hardware (fp32 always does)."""
    if precision == "bf16":
        return _cpu_probe("_is_avx512_bf16_supported") or _cpu_probe("_is_amx_tile_supported")
    if precision == "fp16":
        return _cpu_probe("_is_amx_fp16_supported")
    return True


def cuda_native(precision: str, device: torch.device) -> bool:
    """Whether the GPU runs ``precision`` on tensor cores (bf16 needs compute capability 8.0)."""
    if precision == "fp32":
        return True
    capability = torch.cuda.get_device_capability(device)
    return capability >= ((8, 0) if precision == "bf16" else TENSOR_CORES)


def choose_precision(setting: str, device: torch.device) -> PrecisionChoice:
    """``setting`` ("auto" or one of :data:`PRECISIONS`) resolved for ``device``."""
    if setting not in SETTINGS:
        raise ValueError(f"precision must be one of {SETTINGS}, got {setting!r}")
    native = (lambda p: cuda_native(p, device)) if device.type == "cuda" else cpu_native
    if setting == "auto":
        if device.type == "cuda":
            return PrecisionChoice("fp16" if native("fp16") else "fp32")
        return PrecisionChoice("bf16" if native("bf16") else "fp32")
    if native(setting):
        return PrecisionChoice(setting)
    where = "this GPU has no tensor cores for it" if device.type == "cuda" else "this CPU has no instructions for it"
    return PrecisionChoice(
        setting,
        f"precision {setting} on {device}: {where}, so it is emulated and runs slower than fp32; "
        "set precision=auto (or fp32)",
    )
