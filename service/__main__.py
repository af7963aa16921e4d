"""``kind serve``: one command-line option per :class:`service.config.Settings` field, served by uvicorn.

The options are derived from the Settings model (name, help text, default); secrets (tokens, passwords, keys)
come only from the environment or secret files, never argv. SIGTERM or Ctrl-C starts a graceful drain
(readiness off, new requests 503, in-flight requests finish within the grace period) and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn
from pydantic.fields import FieldInfo

from kind_serve.model import BundleError, InferenceDefaults, load_bundle

from . import logs
from .app import begin_drain, create_app
from .config import Limits, Settings, explain
from .httpserver import server_options
from .inference import geometry

log = logging.getLogger("kind_serve.service")

# the short spellings docs/service.md shows beside the derived ones
ALIASES = {"max_pending_requests": "--max-pending", "request_timeout_s": "--timeout"}
ENV_ONLY = {"auth_tokens"}  # secrets: a command line is visible to every user of the machine (ps)


def setting_options() -> dict[str, FieldInfo]:
    """The Settings fields that are command-line options, by field name."""
    fields = Settings.model_fields.items()
    return {name: info for name, info in fields if name not in ENV_ONLY and "SecretStr" not in str(info.annotation)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kind serve", description="Serve KinD enhancement over HTTP.")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    for name, info in setting_options().items():
        flags = [f"--{name.replace('_', '-')}", *([ALIASES[name]] if name in ALIASES else [])]
        default = info.get_default(call_default_factory=True)
        default = "none" if default in (None, []) else default
        text = f"{info.description} (KIND_{name.upper()}; default: {default})".replace("%", "%%")
        if info.annotation is bool:
            p.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:  # a string: Settings parses and validates it as it does the environment variable
            p.add_argument(*flags, dest=name, default=None, metavar=name.split("_")[-1].upper(), help=text)
    return p.parse_args(argv)


class DrainingServer(uvicorn.Server):
    """uvicorn server whose exit signal first closes admissions, and which exits 0 after SIGTERM."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
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
    overrides = {name: getattr(ns, name) for name in setting_options() if getattr(ns, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # ValidationError, or a KIND_*_FILE that cannot be read
        sys.stderr.write(f"kind serve: invalid settings:\n{explain(exc)}\n")
        return 2
    logs.configure(settings.log_level, settings.json_logs)
    # refuse to start on a missing or corrupt bundle (naming the file), or a tile size its overlap does not fit
    try:
        bundle = load_bundle(settings.checkpoint)
        geometry(settings, InferenceDefaults.from_manifest(bundle.inference), Limits())
    except (BundleError, OSError, ValueError) as exc:
        problem = "cannot load checkpoint: " if isinstance(exc, (BundleError, OSError)) else ""
        sys.stderr.write(f"kind serve: {problem}{exc}\n")
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
        **server_options(settings, app.state.limits, app.state.metrics),
    )
    server = DrainingServer(config, on_exit=lambda: begin_drain(app))
    log.info("serving %s on http://%s:%d", settings.checkpoint, settings.host, ns.port)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
