"""``tally serve``: uvicorn, plus one flusher per server (not one per worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import uvicorn

from app.application import create_app
from app.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from app.settings import Settings
from app.signals import exit_quietly_on_signals


def _config(
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
    flush runs in the lifespan's shutdown). With several, uvicorn's supervisor forks the
    workers and the flusher runs as one child process (``python -m app.worker``) that gets
    SIGTERM, and its grace period, once the workers have stopped.
    """
    if workers <= 1:
        app = create_app(settings, run_flusher=flusher)
        server = uvicorn.Server(_config(app, host, port, settings))
        with exit_quietly_on_signals():
            server.run()
        return 0 if server.started else 1
    # Workers share metrics through files: a fresh directory per server start, so counters
    # of a previous run never leak into this one.
    metrics_dir = Path(
        os.environ.get(MULTIPROC_ENV) or Path(tempfile.gettempdir()) / f"tally-metrics-{port}"
    )
    prepare_multiprocess_dir(metrics_dir)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    # Each worker takes its share of TALLY_RATE_LIMIT.
    os.environ["TALLY_WORKERS"] = str(workers)
    child: subprocess.Popen[bytes] | None = None
    if flusher:
        child = subprocess.Popen([sys.executable, "-m", "app.worker"], env=os.environ.copy())
    with exit_quietly_on_signals():
        try:
            uvicorn.run(
                "app.asgi:app_from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=int(max(1, settings.shutdown_grace)),
            )
        finally:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=settings.shutdown_grace + 5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
    if child is not None and child.returncode not in (0, None):
        return int(child.returncode)
    return 0
