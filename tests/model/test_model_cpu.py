"""``retain_freed_memory``: repeated inference stops page-faulting its activations in again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from kind_serve.model import DecomNet, retain_freed_memory
torch.set_num_threads(1)
retained = retain_freed_memory() if sys.argv[1] == "retain" else None
# fresh memory faults on first touch whatever the allocator: 64 MB is ~1.6·10^4 pages where the kernel counts them
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fresh = torch.ones(16 << 20)
counted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
del fresh
net = DecomNet().eval()
x = torch.rand(1, 3, 200, 300)
with torch.inference_mode():
    net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        net(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"retained": retained, "faults": faults, "counted": counted}}))
"""


def _faults(mode: str) -> dict:
    code = PROBE.format(root=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_retaining_freed_memory_removes_repeated_page_faults() -> None:
    retained = _faults("retain")
    if not retained["retained"]:
        pytest.skip("not a glibc system: mallopt unavailable")
    default = _faults("default")
    if default["counted"] < 1_000:
        pytest.skip("this kernel does not count minor page faults (getrusage ru_minflt stays 0)")
    # two decompositions touch ~130 MB of activations: ~2.7·10^4 fresh 4 KiB pages with the default allocator
    assert default["faults"] > 5_000
    assert retained["faults"] < default["faults"] / 5  # ~10× fewer when quiet; a loaded host adds a few thousand
