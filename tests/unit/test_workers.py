"""HttpWorkers' restart rules, with stand-in processes (the real ones: test_serve.py)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from app import workers
from app.workers import FIRST_RESTART_DELAY, STARTUP_FAILURE, HttpWorkers, _Slot

_pids = itertools.count(1000)


@dataclass
class _Proc:
    returncode: int | None = None
    pid: int = 0

    def __post_init__(self) -> None:
        self.pid = next(_pids)

    def poll(self) -> int | None:
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
def supervisor(monkeypatch: pytest.MonkeyPatch, clock: _Clock) -> HttpWorkers:
    sup = HttpWorkers(count=2, host="127.0.0.1", port=1, grace=1, clock=clock)

    def spawn(slot: _Slot) -> None:
        slot.proc = _Proc()  # type: ignore[assignment]
        slot.started_at = clock()
        slot.restart_at = None

    monkeypatch.setattr(sup, "_spawn", spawn)
    sup._slots = [_Slot() for _ in range(2)]
    for slot in sup._slots:
        sup._spawn(slot)
    return sup


def _die(slot: _Slot, code: int) -> None:
    proc = _proc(slot)
    assert isinstance(proc, _Proc)
    proc.returncode = code


def _proc(slot: _Slot) -> object:
    return slot.proc


def test_a_first_worker_that_cannot_start_stops_the_server(supervisor: HttpWorkers) -> None:
    _die(supervisor._slots[0], STARTUP_FAILURE)
    assert supervisor._tend() is True


def test_a_crashed_worker_is_restarted_after_its_delay(
    supervisor: HttpWorkers, clock: _Clock
) -> None:
    slot = supervisor._slots[1]
    dead = slot.proc
    _die(slot, -9)
    assert supervisor._tend() is False
    assert _proc(slot) is None  # waiting out the delay
    assert slot.delay == 2 * FIRST_RESTART_DELAY  # the next death waits longer
    clock.now += FIRST_RESTART_DELAY / 2
    assert supervisor._tend() is False
    assert _proc(slot) is None
    clock.now += FIRST_RESTART_DELAY / 2
    assert supervisor._tend() is False
    assert _proc(slot) is not None
    assert _proc(slot) is not dead


def test_a_replacement_that_cannot_start_is_retried(supervisor: HttpWorkers, clock: _Clock) -> None:
    # The first worker ran, died; its replacement cannot start (Redis down, say): retried
    # with backoff, while the other worker keeps serving.
    slot, other = supervisor._slots
    serving = other.proc
    _die(slot, -9)
    assert supervisor._tend() is False
    clock.now += 60
    assert supervisor._tend() is False
    _die(slot, STARTUP_FAILURE)
    assert supervisor._tend() is False
    assert _proc(slot) is None
    clock.now += 60
    assert supervisor._tend() is False
    assert _proc(slot) is not None
    assert other.proc is serving


def test_a_worker_dead_after_a_steady_run_waits_the_first_delay_again(
    supervisor: HttpWorkers, clock: _Clock
) -> None:
    slot = supervisor._slots[0]
    slot.delay = 8.0  # after earlier crashes
    clock.now += workers.STEADY_AFTER
    _die(slot, -9)
    assert supervisor._tend() is False
    assert slot.restart_at == clock.now + FIRST_RESTART_DELAY
