"""The API worker processes of ``tally serve --workers N`` (``python -m app.asgi``)."""

from __future__ import annotations

import argparse
import os
import sys

import structlog
import uvicorn
from starlette.applications import Starlette

from app.application import create_app
from app.logs import configure_logging
from app.serve import uvicorn_config
from app.settings import Settings
from app.signals import exit_quietly_on_signals
from app.workers import STARTUP_FAILURE, reuse_port_socket

log = structlog.get_logger("tally.serve")


def app_from_env() -> Starlette:
    """The worker's app, with settings from the environment.

    Workers never run the flusher: ``tally serve`` runs one per server, not one per worker.
    """
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings, run_flusher=False)


def main(argv: list[str] | None = None) -> int:
    """Serve on a socket of this worker's own (SO_REUSEPORT, see :mod:`app.workers`)
    until SIGTERM; exit code 3 when the worker cannot start."""
    parser = argparse.ArgumentParser(prog="python -m app.asgi")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_format, settings.log_level)
    try:
        sock = reuse_port_socket(args.host, args.port)
    except OSError as exc:
        log.error("serve.bind_failed", host=args.host, port=args.port, error=str(exc))
        return STARTUP_FAILURE
    server = uvicorn.Server(uvicorn_config(create_app(settings), args.host, args.port, settings))
    with exit_quietly_on_signals():
        server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
