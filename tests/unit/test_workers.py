"""HttpWorkers' rules, with stand-in processes and a clock the test moves (the real
processes: tests/integration/test_serve.py)."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import anyio
import pytest
import structlog

from app import workers
from app.worker.main import EXIT_HALTED
from app.workers import (
    FIRST_RESTART_DELAY,
    START_MARGIN,
    HttpWorkers,
    _Slot,
    claim_port,
    heartbeat,
    reuse_port_socket,
)

_pids = itertools.count(1000)


class _Proc:
    """A worker process: alive until it dies or is killed; writes heartbeats on demand."""

    def __init__(self, beat_w: int) -> None:
        self.pid = next(_pids)
        self.returncode: int | None = None
        self.beat_w = beat_w
        self.signals: list[int] = []
        self.deaf = False  # ignores SIGTERM: a timed wait runs out
        self.waits: list[float | None] = []

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9

    def beat(self) -> None:
        os.write(self.beat_w, b".")

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        self.waits.append(timeout)
        if self.returncode is None and self.deaf and timeout is not None:
            raise subprocess.TimeoutExpired("tally flush", timeout)
        return self.returncode


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch, clock: _Clock) -> Iterator[HttpWorkers]:
    sup = HttpWorkers(count=2, host="127.0.0.1", port=1, grace=1, timeout=10, clock=clock)
    ends: list[int] = []

    def spawn(slot: _Slot) -> None:
        beats, beat_w = os.pipe()
        os.set_blocking(beats, False)
        ends.append(beat_w)
        slot.proc = _Proc(beat_w)  # type: ignore[assignment]
        slot.beats = beats
        slot.started_at = clock()
        slot.beat_at = None
        slot.restart_at = None

    monkeypatch.setattr(sup, "_spawn", spawn)
    sup._slots = [_Slot() for _ in range(2)]
    for slot in sup._slots:
        sup._spawn(slot)
    yield sup
    for fd in ends:
        os.close(fd)
    for slot in sup._slots:
        if slot.beats is not None:
            os.close(slot.beats)


def _proc(slot: _Slot) -> _Proc | None:
    proc = slot.proc
    assert proc is None or isinstance(proc, _Proc)
    return proc


def _live(slot: _Slot) -> _Proc:
    proc = _proc(slot)
    assert proc is not None
    return proc


def _run_for(
    sup: HttpWorkers, clock: _Clock, seconds: float, beating: tuple[int, ...] = ()
) -> bool:
    """Tend every 0.5 s (a supervisor that is running) for ``seconds``; the workers of
    the slots in ``beating`` beat before each round. True if a round said stop."""
    end = clock.now + seconds
    stop = False
    while clock.now < end:
        clock.now = min(end, clock.now + 0.5)
        for i in beating:
            proc = _proc(sup._slots[i])
            if proc is not None and proc.poll() is None:
                proc.beat()
        stop = sup._tend() or stop
    return stop


def _started(sup: HttpWorkers) -> None:
    for slot in sup._slots:
        _live(slot).beat()
    assert sup._tend() is False


def test_a_first_worker_dead_before_its_first_heartbeat_stops_the_server(
    supervisor: HttpWorkers,
) -> None:
    # Whatever its exit code: an import error exits 1, a failed lifespan too.
    _live(supervisor._slots[0]).returncode = 1
    assert supervisor._tend() is True


def test_a_crashed_worker_is_restarted_after_its_delay(
    supervisor: HttpWorkers, clock: _Clock
) -> None:
    _started(supervisor)
    slot = supervisor._slots[1]
    dead = _live(slot)
    dead.returncode = -9
    assert supervisor._tend() is False
    assert _proc(slot) is None  # waiting out the delay
    assert slot.delay == 2 * FIRST_RESTART_DELAY  # the next death waits longer
    clock.now += FIRST_RESTART_DELAY / 2
    assert supervisor._tend() is False
    assert _proc(slot) is None
    clock.now += FIRST_RESTART_DELAY / 2
    assert supervisor._tend() is False
    assert _live(slot) is not dead


def test_a_replacement_that_cannot_start_is_retried(supervisor: HttpWorkers, clock: _Clock) -> None:
    # The first worker ran, died; its replacement cannot start (Redis down, say): retried
    # with backoff, while the other worker keeps serving.
    _started(supervisor)
    slot, other = supervisor._slots
    serving = _live(other)
    _live(slot).returncode = -9
    assert supervisor._tend() is False
    clock.now += 5
    serving.beat()
    assert supervisor._tend() is False
    _live(slot).returncode = 1  # died before any heartbeat
    assert supervisor._tend() is False
    assert _proc(slot) is None
    clock.now += 5
    serving.beat()
    assert supervisor._tend() is False
    assert _proc(slot) is not None
    assert _live(other) is serving


def test_a_silent_worker_is_killed_and_replaced(supervisor: HttpWorkers, clock: _Clock) -> None:
    _started(supervisor)
    slot, other = supervisor._slots
    silent = _live(slot)
    assert _run_for(supervisor, clock, 9.5, beating=(1,)) is False  # the other one beats
    assert silent.poll() is None  # 9.5 s of silence: within the 10 s time-out
    assert _run_for(supervisor, clock, 1, beating=(1,)) is False
    assert silent.poll() == -9  # 10.5 s: killed
    assert _live(other).returncode is None
    assert _run_for(supervisor, clock, 1, beating=(1,)) is False  # reaped, restarted
    assert _live(slot) is not silent


def test_a_worker_dead_after_a_steady_run_waits_the_first_delay_again(
    supervisor: HttpWorkers, clock: _Clock
) -> None:
    _started(supervisor)
    slot = supervisor._slots[0]
    slot.delay = 8.0  # after earlier crashes
    assert _run_for(supervisor, clock, workers.STEADY_AFTER, beating=(0, 1)) is False
    _live(slot).returncode = -9
    assert supervisor._tend() is False
    assert slot.restart_at == clock.now + FIRST_RESTART_DELAY


def test_a_claimed_port_refuses_another_server_and_admits_the_workers() -> None:
    holder = claim_port("127.0.0.1", 0)
    port = holder.getsockname()[1]
    with holder:
        # Another server's claim fails, even before any worker of ours listens.
        with pytest.raises(OSError, match="in use"):
            claim_port("127.0.0.1", port)
        worker = reuse_port_socket("127.0.0.1", port)
        worker.listen()
        worker.settimeout(5)
        with worker, socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = worker.accept()  # queued on the worker: the holder never listens
            accepted.close()
    with claim_port("127.0.0.1", port):  # released with the server
        pass


def test_claims_of_one_port_take_turns() -> None:
    # Probe and holder are two binds: a claim made while another server's claim of the
    # port is under way (its lock held) waits for it.
    with claim_port("127.0.0.1", 0) as free:
        port = free.getsockname()[1]
    # A lock never released (anyone on the host can hold it) is waited for, then the
    # claim goes on without it: the binds still decide.
    with workers._claim_lock(port, 0):
        started = time.monotonic()
        with claim_port("127.0.0.1", port, lock_wait=0.3):
            assert time.monotonic() - started >= 0.3
            with pytest.raises(OSError, match="in use"):
                claim_port("127.0.0.1", port, lock_wait=0.05)
    claimed: list[socket.socket] = []
    with workers._claim_lock(port, 0):
        waiting = threading.Thread(
            target=lambda: claimed.append(claim_port("127.0.0.1", port, lock_wait=10))
        )
        waiting.start()
        waiting.join(0.2)
        assert waiting.is_alive()
        assert not claimed
    waiting.join(10)
    assert len(claimed) == 1
    assert claimed[0].getsockname()[1] == port
    claimed[0].close()


def test_a_paused_supervisor_does_not_kill_its_workers_on_waking(
    supervisor: HttpWorkers, clock: _Clock
) -> None:
    # The whole server frozen (a paused container) for 20 s: on waking, the supervisor may
    # look before the workers have beaten again. Their silence says nothing then.
    _started(supervisor)
    hung, beating = (_live(s) for s in supervisor._slots)
    clock.now += 20
    assert supervisor._tend() is False
    assert _run_for(supervisor, clock, 9.5, beating=(1,)) is False
    assert hung.poll() is None
    assert beating.poll() is None
    # Silent for 10.5 s since the supervisor woke: now worker 0 is a hung worker.
    assert _run_for(supervisor, clock, 1, beating=(1,)) is False
    assert hung.poll() == -9
    assert _live(supervisor._slots[1]) is beating


def test_a_worker_that_never_starts_is_killed_after_the_start_up_time_out(
    supervisor: HttpWorkers, clock: _Clock
) -> None:
    supervisor.startup_timeout = 5
    supervisor._slots[1].proc.beat()  # type: ignore[union-attr]
    clock.now += 5 + START_MARGIN - 1
    assert supervisor._tend() is False
    stuck = _live(supervisor._slots[0])
    assert stuck.poll() is None
    clock.now += 1.5
    assert supervisor._tend() is False
    assert stuck.poll() == -9
    assert supervisor._tend() is True  # a first worker that never started: stop the server


def test_a_failed_spawn_is_retried_later(
    supervisor: HttpWorkers, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _started(supervisor)
    slot = supervisor._slots[0]
    _live(slot).returncode = -9
    assert supervisor._tend() is False
    spawn = supervisor._spawn

    def out_of_fds(slot: _Slot) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(supervisor, "_spawn", out_of_fds)
    clock.now += FIRST_RESTART_DELAY
    supervisor._slots[1].proc.beat()  # type: ignore[union-attr]
    assert supervisor._tend() is False  # logged, rescheduled: the server goes on
    assert _proc(slot) is None
    monkeypatch.setattr(supervisor, "_spawn", spawn)
    clock.now += 2 * FIRST_RESTART_DELAY
    supervisor._slots[1].proc.beat()  # type: ignore[union-attr]
    assert supervisor._tend() is False
    assert _proc(slot) is not None


def test_another_signal_during_the_stop_kills_the_workers(supervisor: HttpWorkers) -> None:
    _started(supervisor)
    received = [signal.SIGTERM]
    procs = [_live(s) for s in supervisor._slots]
    polls = 0
    ignoring = procs[0]
    real_poll = ignoring.poll

    def poll() -> int | None:  # a worker slow to stop; a second Ctrl-C comes meanwhile
        nonlocal polls
        polls += 1
        if polls == 5:
            received.append(signal.SIGINT)
        return real_poll()

    ignoring.poll = poll  # type: ignore[method-assign]
    procs[1].returncode = 0  # the other stopped at once
    started = time.monotonic()
    supervisor._stop_all(received)
    assert time.monotonic() - started < 2  # not the grace period + 5 s
    assert procs[0].signals == [signal.SIGTERM]
    assert procs[0].returncode == -9


@pytest.fixture
def flushers(
    supervisor: HttpWorkers, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> list[_Proc]:
    """The supervisor runs a flusher too: every flusher process it starts, in order."""
    started: list[_Proc] = []

    def spawn_flusher(slot: _Slot) -> None:
        started.append(_Proc(-1))  # a flusher writes no heartbeat to the supervisor
        slot.proc = started[-1]  # type: ignore[assignment]
        slot.started_at = clock()
        slot.restart_at = None

    monkeypatch.setattr(supervisor, "_spawn_flusher", spawn_flusher)
    supervisor._flusher = _Slot()
    supervisor._spawn_flusher(supervisor._flusher)
    return started


def test_a_dead_flusher_is_restarted_with_backoff_but_a_halted_one_is_not(
    supervisor: HttpWorkers, clock: _Clock, flushers: list[_Proc]
) -> None:
    _started(supervisor)
    flushers[0].returncode = -9
    assert supervisor._tend() is False
    clock.now += FIRST_RESTART_DELAY - 0.1
    assert supervisor._tend() is False
    assert len(flushers) == 1
    clock.now += 0.1
    assert supervisor._tend() is False
    assert len(flushers) == 2
    flushers[1].returncode = 1  # died again: the delay doubles
    assert supervisor._tend() is False
    clock.now += 2 * FIRST_RESTART_DELAY - 0.1
    assert supervisor._tend() is False
    assert len(flushers) == 2
    clock.now += 0.1
    assert supervisor._tend() is False
    assert len(flushers) == 3
    flushers[2].returncode = EXIT_HALTED  # it would halt again: the operator acts
    assert _run_for(supervisor, clock, 120, beating=(0, 1)) is False
    assert len(flushers) == 3
    assert supervisor._stop_flusher() == EXIT_HALTED  # the server's exit code


def test_the_flusher_gets_one_sigterm_once_the_workers_are_gone(
    supervisor: HttpWorkers, flushers: list[_Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its final flush must see every event the workers acknowledged, and a second SIGTERM
    # would cancel it.
    events: list[tuple[int, int]] = []

    def send_signal(proc: _Proc, sig: int) -> None:
        events.append((proc.pid, sig))
        proc.returncode = -sig

    monkeypatch.setattr(_Proc, "send_signal", send_signal)
    supervisor.flusher = True
    flusher = flushers[0]
    monkeypatch.setattr(supervisor, "_spawn_flusher", lambda slot: setattr(slot, "proc", flusher))
    assert supervisor.run([signal.SIGTERM]) == 0  # a stop requested before any tending
    worker_pids = {pid for pid, _ in events[:2]}
    assert flusher.pid not in worker_pids
    assert len(worker_pids) == 2
    assert events[2:] == [(flusher.pid, signal.SIGTERM)]


def test_a_flusher_dead_at_the_stop_fails_the_exit_code(
    supervisor: HttpWorkers, flushers: list[_Proc]
) -> None:
    # Killed and waiting for its restart when the server stops: no final flush ran (what
    # it had not flushed waits in Redis for the next flusher), and the exit code says so.
    _started(supervisor)
    flushers[0].returncode = -9
    assert supervisor._tend() is False
    assert supervisor._stop_flusher() == 1


def test_a_flusher_deaf_to_sigterm_is_killed_after_its_grace(
    supervisor: HttpWorkers, flushers: list[_Proc]
) -> None:
    # Its final flush gets grace + 5 s; past that it is killed, and the exit code says no
    # final flush finished.
    _started(supervisor)
    flusher = flushers[0]
    flusher.deaf = True
    with structlog.testing.capture_logs() as logs:
        assert supervisor._stop_flusher() == 1
    assert flusher.signals == [signal.SIGTERM]
    assert flusher.waits == [supervisor.grace + 5, None]
    assert flusher.returncode == -9
    assert [e["event"] for e in logs] == ["flusher.killed"]
    assert supervisor._flusher is not None
    assert supervisor._flusher.proc is None


async def test_the_heartbeat_stops_quietly_once_the_supervisor_is_gone() -> None:
    # A broken pipe must not fail the worker's lifespan: that would close its pools while
    # uvicorn drains the requests in flight.
    beats, beat_w = os.pipe()
    os.close(beats)
    try:
        with anyio.fail_after(2):
            await heartbeat(beat_w)
    finally:
        os.close(beat_w)
