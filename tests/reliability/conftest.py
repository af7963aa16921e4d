"""Fixtures for the reliability tests: a random-weights bundle, settings, and real servers on loopback.

Two kinds of server: :class:`ThreadServer` runs the app under uvicorn in a thread of the test process (so a
test can wrap a worker's compute function or watch file opens), :func:`start_kind_serve` runs ``kind serve``
as a subprocess (so a test can send it signals or check its start-up). Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from kind_serve.model import KinD
from kind_serve.service.config import Settings
from tests import servers
from tests.servers import REPO, ThreadServer, free_port, kind_serve, kind_serve_command, start_redis

__all__ = [
    "REPO",
    "ThreadServer",
    "free_port",
    "kind_serve_command",
    "start_redis",
]  # re-exported for the reliability tests


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the machine is shared with a training run; small images need no more


@pytest.fixture(scope="session")
def rel_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint bundle of a seeded, randomly initialised KinD."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rel-bundle") / "kind-random"
    KinD(version="reliability-random").save(path)
    return path


def rel_settings(bundle: Path, **overrides: object) -> Settings:
    """The reliability servers' settings: the random bundle on the CPU, 128-px tiles, no warm-up."""
    base = {"checkpoint": bundle, "device": "cpu", "tile_size": 128, "json_logs": False, "warmup": False}
    return Settings(**{**base, **overrides})


@pytest.fixture
def make_settings(rel_bundle: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        return rel_settings(rel_bundle, **overrides)

    return make


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        got = ",".join(sorted(p for p in label_text.rstrip("}").split(",") if p))
        if got == want:
            return float(value)
    return 0.0


def start_kind_serve(bundle: Path, port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``kind serve`` on ``bundle`` as a subprocess (stdout/stderr captured); not yet waited for."""
    defaults = {
        "KIND_DEVICE": "cpu",
        "KIND_WARMUP": "false",
        "KIND_JSON_LOGS": "false",
        "OMP_NUM_THREADS": "1",
    }
    return kind_serve(
        port,
        "--checkpoint",
        str(bundle),
        *args,
        env={**defaults, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 90) -> None:
    """:func:`tests.servers.wait_ready` for a ``kind serve`` subprocess."""
    servers.wait_ready(url, proc, timeout)


def stop(proc: subprocess.Popen) -> None:
    """Kill a server subprocess this test started (if it is still running) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


@pytest.fixture
def redis_server() -> Iterator[tuple[subprocess.Popen, int]]:
    """A throw-away ``redis-server`` on a free loopback port."""
    port = free_port()
    proc = start_redis(port)
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
