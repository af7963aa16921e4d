"""Real servers on loopback for the tests and benchmarks: a free port, ``kind serve`` as a process, readiness.

:func:`kind_serve` starts ``kind serve`` as a subprocess, :func:`wait_ready` polls ``/readyz`` until it
answers 200, :class:`ThreadServer` runs the app in a thread of the caller, :func:`start_redis` a throw-away
``redis-server``. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from kind_serve.service.__main__ import server_options
from kind_serve.service.app import create_app
from kind_serve.service.config import Limits, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPO = Path(__file__).resolve().parent.parent


def kind_serve_command(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "kind_cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]


def kind_serve(port: int, *args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """``kind serve --host 127.0.0.1 --port PORT ARGS`` from the repository root; not yet waited for.

    ``env`` is added to this process's environment; ``popen`` goes to :class:`subprocess.Popen` (stdout, stderr).
    """
    return subprocess.Popen(kind_serve_command(port, *args), cwd=REPO, env={**os.environ, **(env or {})}, **popen)


def _output_tail(proc: subprocess.Popen) -> str:
    if proc.stderr is None:
        return ""
    out = proc.stderr.read()
    return (out.decode(errors="replace") if isinstance(out, bytes) else out)[-3000:]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 90) -> None:
    """Poll ``url/readyz`` until 200; RuntimeError (with the server's stderr) if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {_output_tail(proc)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready within {timeout:g} s")


def start_redis(port: int, data_dir: Path | None = None) -> subprocess.Popen:
    """``redis-server`` on a loopback ``port``, once it answers PING: without persistence, or with ``data_dir``
    an append-only file there, fsynced on every write, that keeps the data across a restart."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it as root)")
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    if data_dir is None:
        cmd += ["--appendonly", "no"]
    else:
        cmd += ["--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "always"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                if client.ping():
                    return proc
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
    finally:
        client.close()


class ThreadServer:
    """``create_app(settings, limits)`` under a real uvicorn on a loopback port, in a background thread.

    In-process, so a test can wrap a worker's compute function or watch file opens.
    """

    def __init__(self, settings: Settings, limits: Limits | None = None) -> None:
        self.port = free_port()
        self.app = create_app(settings, limits)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            server_header=False,
            **server_options(
                settings, self.app.state.limits, self.app.state.metrics
            ),  # the same HTTP parser and limits as `kind serve`
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
