"""``tally serve --workers N``: N uvicorn processes, each listening on its own socket.

uvicorn's own multi-worker mode shares one listening socket between the workers, and a
worker that wakes up accepts every connection waiting: a client with a few keep-alive
connections (a proxy, a load generator) gets all of them served by one worker while the
others idle. Measured with wrk: all 16 connections on one of two workers. Here every worker
binds its own socket with ``SO_REUSEPORT`` and the kernel spreads new connections over
them (by a hash of the addresses), so N workers serve N times as many connections.

The supervisor starts the workers in their own session (a terminal's Ctrl-C reaches only
``tally serve``, which stops each worker with one SIGTERM and its grace period), restarts
one that dies (with backoff), and stops everything if one of the first workers cannot
start (exit code 3 from ``python -m app.asgi``: a configuration error, restarting would
fail the same way; a replacement that cannot start is retried).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from app.embedded import die_with_parent
from app.metrics import mark_process_dead

log = structlog.get_logger("tally.workers")

# A worker's exit code when it could not start (uvicorn's own for a failed lifespan).
STARTUP_FAILURE = 3
FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
# A worker that ran this long before dying is restarted after the first delay again.
STEADY_AFTER = 60.0


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening yet)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def claim_port(host: str, port: int) -> int:
    """Check that nothing listens on ``host:port`` (an ordinary bind fails if anything
    does, another ``tally serve`` included); returns the port (a free one for 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        bound: int = probe.getsockname()[1]
    return bound


@dataclass
class _Slot:
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay: float = FIRST_RESTART_DELAY
    restart_at: float | None = None
    # Still the worker started with the server: its start-up failing is a configuration
    # error. A replacement that cannot start (say Redis is down) is retried instead.
    first: bool = True


@dataclass
class HttpWorkers:
    """Runs ``count`` API workers on ``host:port`` until a signal arrives."""

    count: int
    host: str
    port: int
    grace: float
    clock: Callable[[], float] = time.monotonic
    _slots: list[_Slot] = field(default_factory=list)

    def _spawn(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", "app.asgi", "--host", self.host, "--port", str(self.port)],
            env=os.environ.copy(),
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),  # noqa: PLW1509
        )
        slot.started_at = self.clock()
        slot.restart_at = None

    def run(self, received: Sequence[int]) -> int:
        """Serve until ``received`` (filled by signal handlers) is not empty; 0 after a
        signal, 1 when a worker could not start."""
        self._slots = [_Slot() for _ in range(self.count)]
        for slot in self._slots:
            self._spawn(slot)
        log.info(
            "serve.workers_started",
            workers=[s.proc.pid for s in self._slots if s.proc is not None],
            port=self.port,
        )
        code = 0
        try:
            while not received:
                if self._tend():
                    code = 1
                    break
                time.sleep(0.1)
        finally:
            self._stop_all()
        return code

    def _tend(self) -> bool:
        """Restart dead workers when their delay is over; True if one could not start."""
        now = self.clock()
        for slot in self._slots:
            proc = slot.proc
            if proc is not None and proc.poll() is not None:
                mark_process_dead(proc.pid)
                if proc.returncode == STARTUP_FAILURE and slot.first:
                    log.error("serve.worker_failed_to_start", pid=proc.pid)
                    return True
                if now - slot.started_at >= STEADY_AFTER:
                    slot.delay = FIRST_RESTART_DELAY
                log.warning(
                    "serve.worker_died", pid=proc.pid, code=proc.returncode, delay=slot.delay
                )
                slot.proc = None
                slot.first = False
                slot.restart_at = now + slot.delay
                slot.delay = min(slot.delay * 2, MAX_RESTART_DELAY)
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot)
        return False

    def _stop_all(self) -> None:
        live = [s.proc for s in self._slots if s.proc is not None and s.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 5
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("serve.worker_killed", pid=proc.pid)
                proc.kill()
                proc.wait()
        for proc in live:
            mark_process_dead(proc.pid)
