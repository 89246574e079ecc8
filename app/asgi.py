"""The API worker processes of ``tally serve --workers N`` (``python -m app.asgi``)."""

from __future__ import annotations

import argparse
import os
import sys

import structlog
import uvicorn

from app.application import create_app
from app.embedded import follow_parent
from app.logs import configure_logging
from app.serve import uvicorn_config
from app.settings import Settings
from app.workers import reuse_port_socket

log = structlog.get_logger("tally.serve")


def main(argv: list[str] | None = None) -> int:
    """Serve on a socket of this worker's own (SO_REUSEPORT, see :mod:`app.workers`),
    writing heartbeats to ``--heartbeat-fd`` once started, until SIGTERM (after which
    uvicorn, done, re-raises it: the worker ends by that signal)."""
    follow_parent()
    parser = argparse.ArgumentParser(prog="python -m app.asgi")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--heartbeat-fd", type=int)
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_format, settings.log_level)
    try:
        sock = reuse_port_socket(args.host, args.port)
    except OSError as exc:
        log.error("serve.bind_failed", host=args.host, port=args.port, error=str(exc))
        return 1
    app = create_app(settings, heartbeat_fd=args.heartbeat_fd)
    server = uvicorn.Server(uvicorn_config(app, args.host, args.port, settings))
    server.run(sockets=[sock])
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
