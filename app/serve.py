"""``tally serve``: uvicorn, plus one flusher per server (not one per worker)."""

from __future__ import annotations

import errno
import os
import signal
import tempfile
from pathlib import Path

import structlog
import uvicorn

from app.application import create_app
from app.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from app.settings import Settings
from app.signals import exit_quietly_on_signals
from app.workers import HttpWorkers, claim_port

log = structlog.get_logger("tally.serve")


def uvicorn_config(
    app: object, host: str, port: int, settings: Settings, **extra: object
) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(max(1, settings.shutdown_grace)),
        **extra,  # type: ignore[arg-type]
    )


def serve(settings: Settings, host: str, port: int, workers: int, flusher: bool) -> int:
    """Run the API until SIGINT/SIGTERM; returns the exit code.

    With one worker the flusher is a supervised task inside the same event loop (its final
    flush runs in the lifespan's shutdown). With several, :class:`HttpWorkers` runs the
    workers (``python -m app.asgi``, each on its own SO_REUSEPORT socket) and the flusher
    runs as one child process (``python -m app.worker``) that gets SIGTERM, and its grace
    period, once the workers have stopped.
    """
    if workers <= 1:
        app = create_app(settings, run_flusher=flusher)
        server = uvicorn.Server(uvicorn_config(app, host, port, settings))
        with exit_quietly_on_signals():
            server.run()
        return 0 if server.started else 1
    try:
        holder = claim_port(host, port)
    except OSError as exc:
        event = "serve.port_in_use" if exc.errno == errno.EADDRINUSE else "serve.bind_failed"
        log.error(event, host=host, port=port, error=str(exc))
        return 1
    with holder:
        return _serve_workers(settings, host, holder.getsockname()[1], workers, flusher)


def _serve_workers(settings: Settings, host: str, port: int, workers: int, flusher: bool) -> int:
    # Workers share metrics through files: a fresh directory per server start, so counters
    # of a previous run never leak into this one.
    metrics_dir = Path(
        os.environ.get(MULTIPROC_ENV) or Path(tempfile.gettempdir()) / f"tally-metrics-{port}"
    )
    prepare_multiprocess_dir(metrics_dir)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    # Each worker takes its share of TALLY_RATE_LIMIT.
    os.environ["TALLY_WORKERS"] = str(workers)
    # SIGHUP (a closed terminal) stops the server like SIGTERM: uvicorn's supervisor
    # restarted its workers on it, which a terminal's hang-up never meant.
    with exit_quietly_on_signals((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as received:
        return HttpWorkers(
            workers,
            host,
            port,
            settings.shutdown_grace,
            settings.worker_timeout,
            settings.startup_timeout,
            flusher=flusher,
        ).run(received)
