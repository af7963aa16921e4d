"""Process settings that make CPU inference faster.

KinD's activations are tens of megabytes each (32 channels × 600×400 × 4 bytes ≈ 31 MB). glibc's malloc serves
blocks that large with fresh ``mmap`` pages and hands them back on free, so every layer of every image
page-faults its output in again: measured here, ~100k minor faults and ~0.2 s of kernel time per 600×400 image,
10–15 % of the run. Keeping freed memory in the heap removes that cost; the price is that the process keeps its
peak footprint instead of returning it to the system between images.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def retain_freed_memory(max_block_bytes: int = 1 << 30) -> bool:
    """Serve blocks up to ``max_block_bytes`` from the malloc heap, one heap for all threads, and keep freed
    memory for reuse.

    Returns False (and changes nothing) where the C library is not glibc. Process-wide: call it once, early,
    in a process that runs inference on the CPU.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.info("mallopt unavailable (C library %r): keeping the default allocator", name)
        return False
    ok = all(
        mallopt(param, value)
        for param, value in (
            (_M_MMAP_THRESHOLD, max_block_bytes),
            (_M_TRIM_THRESHOLD, max_block_bytes),
            (_M_TOP_PAD, 64 << 20),
            # threads other than the main one get arenas whose heaps stop at 64 MB, so their larger blocks are
            # mapped afresh whatever the threshold: one arena keeps a worker thread's freed memory too (a
            # 1248² re-lighting batch in a worker thread: 73k page faults a call, 3.5k with one arena)
            (_M_ARENA_MAX, 1),
        )
    )
    if not ok:
        logger.info("mallopt refused the settings: keeping the default allocator")
    return bool(ok)


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the system now (glibc ``malloc_trim``); False where unavailable.

    The counterpart of :func:`retain_freed_memory` for when the work is over: call it when a burst of large
    allocations has ended (the service does when it falls idle), so a spike does not stay resident.
    """
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0))
    except (OSError, AttributeError, TypeError):
        return False


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``), or 0 where that is not available."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
