"""``tally serve``: uvicorn, plus one flusher per server (not one per worker)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import structlog
import uvicorn

from app.application import create_app
from app.embedded import start_child
from app.metrics import MULTIPROC_ENV, mark_process_dead, prepare_multiprocess_dir
from app.settings import Settings
from app.signals import exit_quietly_on_signals
from app.worker.main import EXIT_HALTED
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
    supervisor = _FlusherSupervisor() if flusher else None
    if supervisor is not None:
        supervisor.start()
    # SIGHUP (a closed terminal) stops the server like SIGTERM: uvicorn's supervisor
    # restarted its workers on it, which a terminal's hang-up never meant.
    with exit_quietly_on_signals((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as received:
        try:
            code = HttpWorkers(
                workers,
                host,
                port,
                settings.shutdown_grace,
                settings.worker_timeout,
                settings.startup_timeout,
            ).run(received)
        finally:
            flusher_code = supervisor.stop(settings.shutdown_grace + 5) if supervisor else 0
    return code or flusher_code


class _FlusherSupervisor:
    """Runs ``python -m app.worker`` as a child and restarts it if it dies (with backoff).

    On stop: SIGTERM, wait for its final flush within the grace period, then SIGKILL.
    A halted flusher (exit 3) is not restarted: it would halt again; the operator acts.
    """

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="flusher-supervisor", daemon=True)

    def _spawn(self) -> None:
        # start_child: one SIGTERM from `tally serve` stops it (a second signal would cancel
        # its final flush), and it never outlives the server.
        self._child = start_child("app.worker")

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _watch(self) -> None:
        try:
            self._restart_when_dead()
        finally:
            # A child this thread started gets SIGTERM when the thread ends (PDEATHSIG
            # follows the thread, not the process): outlive it, or stop()'s own SIGTERM
            # would be the second, which cancels the final flush.
            with self._lock:
                child = self._child
            if child is not None:
                child.wait()

    def _restart_when_dead(self) -> None:
        delay = 0.5
        while not self._stopping.wait(0.5):
            with self._lock:
                child = self._child
                if child is None or child.poll() is None or self._stopping.is_set():
                    continue
                mark_process_dead(child.pid)
                if child.returncode == EXIT_HALTED:
                    log.error("flusher.halted_not_restarted", code=child.returncode)
                    return
                log.warning("flusher.restarting", code=child.returncode, delay=delay)
            if self._stopping.wait(delay):
                return
            with self._lock:
                if not self._stopping.is_set():
                    self._spawn()
            delay = min(delay * 2, 30.0)

    def stop(self, timeout: float) -> int:
        with self._lock:
            self._stopping.set()
            child = self._child
        if child is None:
            return 0
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        mark_process_dead(child.pid)
        return 0 if child.returncode in (0, -signal.SIGTERM) else int(child.returncode)
