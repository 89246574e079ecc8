"""HttpWorkers' rules, with stand-in processes and a clock the test moves (the real
processes: tests/integration/test_serve.py)."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator

import pytest

from app import workers
from app.workers import FIRST_RESTART_DELAY, HttpWorkers, _Slot, claim_port, reuse_port_socket

_pids = itertools.count(1000)


class _Proc:
    """A worker process: alive until it dies or is killed; writes heartbeats on demand."""

    def __init__(self, beat_w: int) -> None:
        self.pid = next(_pids)
        self.returncode: int | None = None
        self.beat_w = beat_w

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9

    def beat(self) -> None:
        os.write(self.beat_w, b".")


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
    clock.now += 9
    _live(other).beat()  # the other one keeps beating
    assert supervisor._tend() is False
    assert silent.poll() is None  # 9 s of silence: within the 10 s time-out
    clock.now += 2
    _live(other).beat()
    assert supervisor._tend() is False
    assert silent.poll() == -9  # 11 s: killed
    assert _live(other).returncode is None
    assert supervisor._tend() is False  # reaped, restarted after the first delay
    clock.now += FIRST_RESTART_DELAY
    assert supervisor._tend() is False
    assert _live(slot) is not silent


def test_a_worker_dead_after_a_steady_run_waits_the_first_delay_again(
    supervisor: HttpWorkers, clock: _Clock
) -> None:
    _started(supervisor)
    slot = supervisor._slots[0]
    slot.delay = 8.0  # after earlier crashes
    clock.now += workers.STEADY_AFTER
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
