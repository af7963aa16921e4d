"""One line describing the machine, printed beside every benchmark figure (the CPU flags decide the kernels)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags(**extra: object) -> str:
    """``x86_64 <model>, nproc=N, flags: avx2+ …`` plus ``key=value`` for each of ``extra``."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    have = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    marks = " ".join(f"{f}{'+' if f in have else '-'}" for f in FLAGS)
    more = "".join(f", {key}={value}" for key, value in extra.items())
    return f"{platform.machine()} {model}, nproc={os.cpu_count()}{more}, flags: {marks}"
