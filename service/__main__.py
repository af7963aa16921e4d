"""``kind serve``: command-line options mapped onto :class:`service.config.Settings`, served by uvicorn.

Options not given on the command line come from ``KIND_*`` environment variables, then the defaults.
SIGTERM or Ctrl-C starts a graceful drain (readiness off, new requests 503, in-flight requests finish
within the grace period) and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

import uvicorn

from model import BundleError, load_bundle

from . import logs
from .app import begin_drain, create_app
from .config import Settings, explain
from .httpserver import server_options

log = logging.getLogger("service")

# option → Settings field
OPTIONS = {
    "checkpoint": "checkpoint",
    "device": "device",
    "precision": "precision",
    "threads": "torch_threads",
    "max_batch_size": "max_batch_size",
    "max_queue_delay_ms": "max_queue_delay_ms",
    "max_pending": "max_pending_requests",
    "timeout": "request_timeout_s",
    "tile_size": "tile_size",
    "redis_url": "redis_url",
    "host": "host",
    "log_level": "log_level",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kind serve", description="Serve KinD enhancement over HTTP.")
    p.add_argument("--host", help="bind address (KIND_HOST; default 127.0.0.1; beyond loopback needs auth tokens)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--checkpoint", help="bundle directory (KIND_CHECKPOINT; default: the shipped bundle)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:0,cuda:1 (KIND_DEVICE; default auto)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="KIND_PRECISION (default fp32)")
    p.add_argument("--threads", type=int, help="torch CPU threads, 0 = all (KIND_TORCH_THREADS)")
    p.add_argument("--max-batch-size", type=int, help="items per batch, 1 disables batching")
    p.add_argument("--max-queue-delay-ms", type=float, help="longest extra wait to fill a batch")
    p.add_argument("--max-pending", type=int, help="admitted requests before 503 (KIND_MAX_PENDING_REQUESTS)")
    p.add_argument("--timeout", type=float, help="per-request deadline in seconds (KIND_REQUEST_TIMEOUT_S)")
    p.add_argument("--tile-size", type=int, help="tile side for large images (default: the bundle's)")
    p.add_argument("--redis-url", help="share stored images through Redis (KIND_REDIS_URL)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return p.parse_args(argv)


class DrainingServer(uvicorn.Server):
    """uvicorn server whose exit signal first closes admissions, and which exits 0 after SIGTERM."""

    def __init__(self, config: uvicorn.Config, on_exit) -> None:  # noqa: ANN001
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutdown; a drained SIGTERM is a clean stop (exit 0)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list) and sig == signal.SIGTERM:
            captured[:] = [s for s in captured if s != signal.SIGTERM]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        args = args[1:]
    ns = parse_args(args)
    overrides = {field: getattr(ns, opt) for opt, field in OPTIONS.items() if getattr(ns, opt) is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # ValidationError, or a KIND_*_FILE that cannot be read
        sys.stderr.write(f"kind serve: invalid settings:\n{explain(exc)}\n")
        return 2
    logs.configure(settings.log_level, settings.json_logs)
    try:
        load_bundle(settings.checkpoint)  # refuse to start on a missing or corrupt bundle, naming the file
    except (BundleError, OSError) as exc:
        sys.stderr.write(f"kind serve: cannot load checkpoint: {exc}\n")
        return 2
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=ns.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
        timeout_keep_alive=5,
        **server_options(settings),
    )
    server = DrainingServer(config, on_exit=lambda: begin_drain(app))
    log.info("serving %s on http://%s:%d", settings.checkpoint, settings.host, ns.port)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
