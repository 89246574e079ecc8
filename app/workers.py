"""``tally serve --workers N``: N uvicorn processes, each listening on its own socket.

uvicorn's own multi-worker mode shares one listening socket between the workers. Measured
with wrk opening 16 keep-alive connections at once, one of two workers accepted all 16 and
the other idled. Here every worker binds its own socket with ``SO_REUSEPORT`` and the
kernel spreads new connections over them (by a hash of the addresses; Linux).

The price of per-socket hashing: a worker that stops answering keeps its share of new
connections. So each worker writes a heartbeat from its event loop to a pipe (once per
second, :func:`heartbeat`); the supervisor kills a worker whose heartbeat is older than
``TALLY_WORKER_TIMEOUT`` and starts another.

The supervisor:

- holds the port for the server's life (a socket bound without ``SO_REUSEADDR``, never
  listening), so a second server on the port is refused instead of sharing it;
- starts the workers in their own session (a terminal's Ctrl-C reaches only ``tally
  serve``, which stops each worker with one SIGTERM and its grace period; a second signal
  kills them);
- restarts a worker that dies, with backoff;
- stops everything (exit 1) when one of the first workers dies before its first heartbeat:
  the app cannot start, and restarting would fail the same way. A replacement that cannot
  start (say Redis is down) is retried;
- runs the server's one flusher (``python -m app.worker``) beside the workers, restarts it
  with backoff if it dies (not if it halted, exit 3: it would halt again; the operator
  acts), and stops it last, after the workers, so its final flush sees every acknowledged
  event. It is tended by the same loop as the workers, from the main thread (PDEATHSIG
  follows the thread that started a child).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import anyio
import structlog

from app.embedded import start_child
from app.metrics import mark_process_dead
from app.worker.main import EXIT_HALTED

log = structlog.get_logger("tally.workers")

FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
# A worker that ran this long before dying is restarted after the first delay again.
STEADY_AFTER = 60.0
HEARTBEAT_INTERVAL = 1.0
# A supervisor that did not look for this long was itself stopped (a frozen container):
# its workers' silence then says nothing, and the time-outs start again.
PAUSED_AFTER = 2.0
# A worker that has not started this long after its start-up time-out is killed.
START_MARGIN = 10.0
# How long a claim of a port waits for another server's claim of it to finish.
CLAIM_LOCK_WAIT = 2.0


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bound(host: str, port: int, *options: int) -> socket.socket:
    """A TCP socket with the SOL_SOCKET ``options`` on, bound to ``host:port``."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        for option in options:
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A worker's TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening yet)."""
    return _bound(host, port, socket.SO_REUSEADDR, socket.SO_REUSEPORT)


def claim_port(host: str, port: int, *, lock_wait: float = CLAIM_LOCK_WAIT) -> socket.socket:
    """Hold ``host:port`` for this server (a free port for 0); OSError if anything else
    holds it, another ``tally serve`` included.

    An ordinary bind (the probe) fails if anything listens on the port. The socket returned
    has SO_REUSEPORT but not SO_REUSEADDR and never listens: the workers bind beside it, no
    connection is ever queued on it, and every later probe (or uvicorn-style bind) fails
    against it, even before the workers listen. Probe and holder are two binds, so two
    servers claiming the port at the same instant could both pass the probe before either
    holds: :func:`_claim_lock` makes their claims take turns.
    """
    if port == 0:
        with _bound(host, 0, socket.SO_REUSEADDR) as probe:
            port = probe.getsockname()[1]
    with _claim_lock(port, lock_wait):
        with _bound(host, port, socket.SO_REUSEADDR):
            pass
        return _bound(host, port, socket.SO_REUSEPORT)


@contextlib.contextmanager
def _claim_lock(port: int, wait: float) -> Iterator[None]:
    """Hold the host-wide lock on claims of ``port`` (any address): a Unix socket bound in
    the abstract namespace, which the kernel releases when its holder exits, however it
    exits. A claim takes microseconds, so a busy lock is waited for (up to ``wait``
    seconds); then this claim's probe meets the other server's holder.

    Abstract sockets have no permissions: anyone on the host can hold the lock. So a lock
    held longer than ``wait`` is not a refusal: the claim goes on without it (the binds
    still refuse a port really in use; only the microsecond race is left open)."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                lock.bind(f"\0tally-serve-claim-port-{port}")
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                if time.monotonic() >= deadline:
                    log.warning("serve.claim_lock_busy", port=port, waited_s=wait)
                    break
                time.sleep(0.001)
        yield
    finally:
        lock.close()


async def heartbeat(fd: int) -> None:
    """Write a byte to ``fd`` every second while the event loop runs (a worker's liveness
    for :class:`HttpWorkers`). Never blocks: a full pipe skips the beat. Once the
    supervisor is gone (a broken pipe) it stops beating, and never fails the lifespan: the
    worker, told by PDEATHSIG, drains its requests with its pools still open."""
    os.set_blocking(fd, False)
    while True:
        try:
            os.write(fd, b".")
        except BlockingIOError:
            pass
        except OSError as exc:
            log.warning("serve.heartbeat_stopped", error=str(exc))
            return
        await anyio.sleep(HEARTBEAT_INTERVAL)


@dataclass
class _Slot:
    proc: subprocess.Popen[bytes] | None = None
    beats: int | None = None  # the read end of the worker's heartbeat pipe
    started_at: float = 0.0
    beat_at: float | None = None  # None until the worker's first heartbeat (started)
    delay: float = FIRST_RESTART_DELAY
    restart_at: float | None = None
    # Still the worker started with the server: if it cannot start, the configuration is
    # wrong. A replacement that cannot start (say Redis is down) is retried instead.
    first: bool = True
    # The flusher's: how its last process ended (None while none has ended).
    exit_code: int | None = None
    halted: bool = False


@dataclass
class HttpWorkers:
    """Runs ``count`` API workers on ``host:port`` (and the flusher, with ``flusher``)
    until a signal arrives."""

    count: int
    host: str
    port: int
    grace: float
    timeout: float = 10.0
    startup_timeout: float = 30.0
    flusher: bool = False
    clock: Callable[[], float] = time.monotonic
    _slots: list[_Slot] = field(default_factory=list)
    _flusher: _Slot | None = None
    _tended_at: float | None = None

    def _spawn_flusher(self, slot: _Slot) -> None:
        # start_child: one SIGTERM from `tally serve` stops it (a second signal would cancel
        # its final flush), and it never outlives the server.
        slot.proc = start_child("app.worker")
        slot.started_at = self.clock()
        slot.restart_at = None

    def _spawn(self, slot: _Slot) -> None:
        beats, beat_w = os.pipe()
        os.set_blocking(beats, False)
        try:
            slot.proc = start_child(
                "app.asgi",
                *("--host", self.host, "--port", str(self.port)),
                *("--heartbeat-fd", str(beat_w)),
                pass_fds=(beat_w,),
            )
        except BaseException:
            os.close(beats)
            raise
        finally:
            os.close(beat_w)
        slot.beats = beats
        slot.started_at = self.clock()
        slot.beat_at = None
        slot.restart_at = None

    def run(self, received: Sequence[int]) -> int:
        """Serve until ``received`` (filled by signal handlers) is not empty; 0 after a
        signal, 1 when the app cannot start."""
        self._slots = [_Slot() for _ in range(self.count)]
        self._flusher = _Slot() if self.flusher else None
        code = 0
        try:
            if self._flusher is not None:
                self._spawn_flusher(self._flusher)
            for slot in self._slots:
                self._spawn(slot)
            log.info(
                "serve.workers_started",
                workers=[s.proc.pid for s in self._slots if s.proc is not None],
                port=self.port,
            )
            while not received:
                if self._tend():
                    code = 1
                    break
                time.sleep(0.1)
        finally:
            self._stop_all(received)
            flusher_code = self._stop_flusher()
        return code or flusher_code

    def _tend(self) -> bool:
        """Read heartbeats, kill unresponsive workers, restart dead ones when their delay
        is over; True if one of the first workers could not start."""
        now = self.clock()
        paused = self._tended_at is not None and now - self._tended_at > PAUSED_AFTER
        self._tended_at = now
        for slot in self._slots:
            proc = slot.proc
            if proc is not None and self._heard(slot):
                slot.beat_at = now
            if proc is not None and paused:
                slot.started_at = now
                if slot.beat_at is not None:
                    slot.beat_at = now
            if proc is not None and proc.poll() is not None:
                if self._heard(slot):  # a beat written just before it died
                    slot.beat_at = now
                self._reap(slot, proc)
                if slot.beat_at is None and slot.first:
                    log.error("serve.worker_failed_to_start", pid=proc.pid, code=proc.returncode)
                    return True
                if now - slot.started_at >= STEADY_AFTER:
                    slot.delay = FIRST_RESTART_DELAY
                log.warning(
                    "serve.worker_died", pid=proc.pid, code=proc.returncode, delay=slot.delay
                )
                slot.first = False
                _restart_later(slot, now)
            elif proc is not None:
                self._check_alive(slot, proc, now)
            _spawn_when_due(slot, now, self._spawn, "serve.worker_spawn_failed")
        if self._flusher is not None:
            self._tend_flusher(self._flusher, now)
        return False

    def _tend_flusher(self, slot: _Slot, now: float) -> None:
        """Restart a dead flusher when its delay is over; a halted one stays down."""
        proc = slot.proc
        if proc is not None and proc.poll() is not None:
            mark_process_dead(proc.pid)
            slot.proc = None
            slot.exit_code = proc.returncode
            if proc.returncode == EXIT_HALTED:
                log.error("flusher.halted_not_restarted", pid=proc.pid, code=proc.returncode)
                slot.halted = True
                return
            if now - slot.started_at >= STEADY_AFTER:
                slot.delay = FIRST_RESTART_DELAY
            log.warning("flusher.restarting", pid=proc.pid, code=proc.returncode, delay=slot.delay)
            _restart_later(slot, now)
        _spawn_when_due(slot, now, self._spawn_flusher, "flusher.spawn_failed")

    def _check_alive(self, slot: _Slot, proc: subprocess.Popen[bytes], now: float) -> None:
        """Kill a worker silent for ``timeout`` once started, or not started in time; the
        next rounds reap it (a first worker that never started stops the server)."""
        if slot.beat_at is not None and now - slot.beat_at > self.timeout:
            log.error("serve.worker_unresponsive", pid=proc.pid, silent_s=now - slot.beat_at)
            proc.kill()
            slot.beat_at = now  # one kill per silence
        elif slot.beat_at is None and now - slot.started_at > self.startup_timeout + START_MARGIN:
            log.error("serve.worker_start_timed_out", pid=proc.pid)
            proc.kill()
            slot.started_at = now

    @staticmethod
    def _heard(slot: _Slot) -> bool:
        if slot.beats is None:
            return False
        try:
            return bool(os.read(slot.beats, 4096))
        except BlockingIOError:
            return False

    @staticmethod
    def _reap(slot: _Slot, proc: subprocess.Popen[bytes]) -> None:
        mark_process_dead(proc.pid)
        if slot.beats is not None:
            os.close(slot.beats)
            slot.beats = None
        slot.proc = None

    def _stop_all(self, received: Sequence[int]) -> None:
        """SIGTERM every worker and wait up to grace + 5 s; another signal (a second Ctrl-C),
        or the time running out, kills the rest."""
        live = [s.proc for s in self._slots if s.proc is not None and s.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        signals_before = len(received)
        deadline = time.monotonic() + self.grace + 5
        while any(p.poll() is None for p in live):
            if time.monotonic() >= deadline or len(received) > signals_before:
                for proc in live:
                    if proc.poll() is None:
                        log.warning("serve.worker_killed", pid=proc.pid)
                        proc.kill()
                        proc.wait()
                break
            time.sleep(0.05)
        for slot in self._slots:
            if slot.proc is not None:
                self._reap(slot, slot.proc)

    def _stop_flusher(self) -> int:
        """SIGTERM the flusher once the workers are gone and give its final flush grace +
        5 s, then kill it. 0 if it stopped cleanly; 3 if it had halted; 1 if it died or was
        killed (no final flush ran: what it had not flushed waits in Redis for the next)."""
        slot = self._flusher
        if slot is None:
            return 0
        proc = slot.proc
        if proc is None:  # halted, or dead and waiting to be restarted
            return _flusher_exit(slot.exit_code)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.grace + 5)
            except subprocess.TimeoutExpired:
                log.warning("flusher.killed", pid=proc.pid)
                proc.kill()
                proc.wait()
        mark_process_dead(proc.pid)
        slot.proc = None
        return _flusher_exit(proc.returncode)


def _flusher_exit(code: int | None) -> int:
    if code in (None, 0, -signal.SIGTERM):
        return 0
    return EXIT_HALTED if code == EXIT_HALTED else 1


def _restart_later(slot: _Slot, now: float) -> None:
    slot.restart_at = now + slot.delay
    slot.delay = min(slot.delay * 2, MAX_RESTART_DELAY)


def _spawn_when_due(
    slot: _Slot, now: float, spawn: Callable[[_Slot], None], failed_event: str
) -> None:
    """Start the slot's process if its restart time has come; a failed start (out of fds
    or processes) is tried again after the next delay."""
    if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
        try:
            spawn(slot)
        except OSError as exc:
            log.error(failed_event, error=str(exc), delay=slot.delay)
            _restart_later(slot, now)
