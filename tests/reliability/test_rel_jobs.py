"""Jobs survive their replica and Redis: real ``kind serve`` processes on one real ``redis-server``.

- ``kill -9`` of the replica running a job: the other replica takes the job over when its lease lapses and
  finishes it; ``GET /jobs/{id}`` shows ``done`` with a result equal to the synchronous answer;
- Redis paused 10 s (SIGSTOP/SIGCONT) or restarted (append-only file kept) in the middle of a job: the job
  ends ``done`` (or ``failed`` with a reason), always with ``finished_at``; no answer is ever a 500.

The replica running a job is found from the queue itself: the consumer of the pending stream entry is named
``<host>-<pid>-<random>``. Every loop is bounded; servers and redis-servers are stopped in ``finally``.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from kind_serve.service.store import GROUP, STREAM

from .conftest import REPO, free_port, kind_serve_command, start_redis

LEASE_S = 3.0
STORE_KEY = "replicas-share-this-store-key-0123456789"
TIMEOUT = httpx.Timeout(30.0)


def photo(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((height, width, 3)) * 70).astype(np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def start_replica(bundle: Path, port: int, redis_port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "KIND_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "KIND_WARMUP": "false",
        "KIND_JSON_LOGS": "false",
        "KIND_TILE_SIZE": "128",
        "KIND_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "KIND_STORE_KEY": STORE_KEY,
        "KIND_JOB_LEASE_S": str(LEASE_S),
    }
    out = log.open("w")  # a file, not a pipe: a full pipe would stall the server
    cmd = kind_serve_command(port, "--checkpoint", str(bundle))
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready within {timeout:g} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


@pytest.fixture
def cluster(rel_bundle: Path, tmp_path: Path) -> Iterator[dict]:
    """One persistent redis-server and two replicas on it: their URLs and processes."""
    redis_port = free_port()
    procs: dict[str, subprocess.Popen] = {}
    state: dict = {"redis_port": redis_port, "redis_dir": tmp_path, "procs": procs, "urls": {}}
    state["redis"] = start_redis(redis_port, tmp_path)
    try:
        for name in ("a", "b"):
            port = free_port()
            log = tmp_path / f"{name}.log"
            procs[name] = start_replica(rel_bundle, port, redis_port, log)
            state["urls"][name] = f"http://127.0.0.1:{port}"
            state.setdefault("logs", {})[name] = log
        for name in ("a", "b"):
            wait_ready(state["urls"][name], procs[name], state["logs"][name])
        yield state
    finally:
        for proc in procs.values():
            stop(proc)
        redis_proc = state["redis"]
        if redis_proc.poll() is None:
            redis_proc.send_signal(signal.SIGCONT)
            redis_proc.kill()
        redis_proc.wait(10)


def running_pid(redis_port: int, timeout: float = 60) -> int:
    """The pid of the replica holding the only pending queue entry (consumer ``<host>-<pid>-<random>``)."""
    client = redis.Redis(port=redis_port, socket_timeout=2)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            pending = client.xpending_range(STREAM, GROUP, "-", "+", 10)
            if pending:
                return int(pending[0]["consumer"].decode().rsplit("-", 2)[1])
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError("no replica took the job")


def poll(
    url: str, job_id: str, until: tuple[str, ...], timeout: float, statuses: list[int], seen: list | None = None
) -> dict:
    """GET the job until its state is in ``until``; every status answered goes into ``statuses``, every record
    with the time it was seen into ``seen``."""
    deadline = time.monotonic() + timeout
    record: dict = {}
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{url}/jobs/{job_id}", timeout=5)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        statuses.append(resp.status_code)
        if resp.status_code == 200:
            record = resp.json()
            if seen is not None:
                seen.append((time.monotonic(), record))
            if record["state"] in until:
                return record
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {record.get('state')} after {timeout:g} s: {record}")


def submit(url: str, body: bytes) -> str:
    resp = httpx.post(f"{url}/jobs?alpha=2", content=body, timeout=TIMEOUT)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def wait_progress(url: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = httpx.get(f"{url}/jobs/{job_id}", timeout=5).json()
        if record["progress"]["done"] >= 2:
            return record
        assert record["state"] in ("queued", "running"), record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} made no progress in {timeout:g} s")


def test_kill_9_of_the_running_replica_the_other_finishes_the_job(cluster: dict) -> None:
    urls, procs = cluster["urls"], cluster["procs"]
    body = photo(1024, 768, seed=1)  # 128-px tiles: about 80 items, several seconds on one thread
    began = time.monotonic()
    job_id = submit(urls["a"], body)
    pid = running_pid(cluster["redis_port"])
    victim = next(name for name, proc in procs.items() if proc.pid == pid)
    survivor = "b" if victim == "a" else "a"
    before = wait_progress(urls[survivor], job_id)
    assert before["state"] == "running" and before["attempts"] == 1
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait(10)
    killed_at = time.monotonic()
    statuses: list[int] = []
    seen: list = []
    done = poll(urls[survivor], job_id, ("done", "failed", "cancelled"), 180, statuses, seen)
    took = time.monotonic() - killed_at
    taken = next(at for at, r in seen if r["attempts"] == 2) - killed_at
    assert done["state"] == "done", done
    assert done["attempts"] == 2 and done["finished_at"] >= done["started_at"]
    assert set(statuses) == {200}, statuses
    result = httpx.get(f"{urls[survivor]}/jobs/{job_id}/result", timeout=TIMEOUT)
    direct = httpx.post(f"{urls[survivor]}/enhance?alpha=2", content=body, timeout=httpx.Timeout(300.0))
    assert result.status_code == direct.status_code == 200
    assert result.content == direct.content
    first_run = killed_at - began
    print(
        f"\nkill -9 after {first_run:.1f} s of the job: taken over {taken:.1f} s later (lease {LEASE_S:g} s), "
        f"done {took:.1f} s after the kill"
    )


@pytest.mark.parametrize("fault", ["pause", "restart"])
def test_redis_paused_or_restarted_mid_job_the_job_still_ends(cluster: dict, fault: str) -> None:
    urls, redis_port = cluster["urls"], cluster["redis_port"]
    job_id = submit(urls["a"], photo(1024, 768, seed=2))
    wait_progress(urls["a"], job_id)
    statuses: list[int] = []
    began = time.monotonic()
    if fault == "pause":
        cluster["redis"].send_signal(signal.SIGSTOP)
        end = time.monotonic() + 10
        while time.monotonic() < end:  # the API answers 503 meanwhile, never 500
            with contextlib.suppress(httpx.TransportError):
                statuses.append(httpx.get(f"{urls['b']}/jobs/{job_id}", timeout=5).status_code)
            time.sleep(0.5)
        cluster["redis"].send_signal(signal.SIGCONT)
    else:
        cluster["redis"].terminate()
        cluster["redis"].wait(10)
        time.sleep(2)
        cluster["redis"] = start_redis(redis_port, cluster["redis_dir"])
    record = poll(urls["b"], job_id, ("done", "failed", "cancelled"), 240, statuses)
    took = time.monotonic() - began
    assert record["finished_at"] is not None, record
    assert record["state"] == "done" or (record["state"] == "failed" and record["error"]["detail"]), record
    assert 500 not in statuses and set(statuses) <= {200, 503}, statuses
    result = httpx.get(f"{urls['a']}/jobs/{job_id}/result", timeout=TIMEOUT)
    assert result.status_code == (200 if record["state"] == "done" else record["error"]["status"])
    assert result.status_code != 500
    print(f"\nRedis {fault}: job {record['state']} {took:.1f} s after the fault began, attempts {record['attempts']}")
