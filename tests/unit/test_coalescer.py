"""The coalescer on its own: who shares a call, what each caller gets back, and when."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from app.coalescer import Coalescer, CoalescerStoppedError

pytestmark = pytest.mark.unit


class Calls:
    """An ``apply`` that records its calls and can be held open, like a slow round trip."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0

    async def apply(self, key: str, values: Sequence[int]) -> list[int | Exception]:
        self.calls.append((key, list(values)))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        if key == "broken":
            raise ConnectionError("down")
        return [ValueError(f"odd {v}") if v % 2 else v * 10 for v in values]

    async def hold(self, coalescer: Coalescer[str, int, int]) -> asyncio.Task[int]:
        """A first call (of value 0) held open, so that what is submitted next queues."""
        self.gate.clear()
        first = asyncio.create_task(coalescer.submit("a", 0))
        await asyncio.sleep(0.01)
        return first

    async def release(self, first: asyncio.Task[int]) -> None:
        """Let calls finish, once what was submitted meanwhile has queued."""
        await asyncio.sleep(0.01)
        self.gate.set()
        assert await first == 0


@contextlib.asynccontextmanager
async def pumping(coalescer: Coalescer[str, int, int]) -> AsyncIterator[None]:
    pump = asyncio.create_task(coalescer.run())
    try:
        yield
    finally:
        pump.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pump


@pytest.fixture
async def calls() -> Calls:
    return Calls()


@pytest.fixture
async def running(calls: Calls) -> AsyncIterator[Coalescer[str, int, int]]:
    coalescer: Coalescer[str, int, int] = Coalescer(calls.apply, max_batch=3, max_in_flight=1)
    async with pumping(coalescer):
        yield coalescer


async def test_a_lone_request_is_sent_at_once(
    calls: Calls, running: Coalescer[str, int, int]
) -> None:
    assert await asyncio.wait_for(running.submit("a", 2), 1) == 20
    assert calls.calls == [("a", [2])]


async def test_requests_queued_during_a_call_share_the_next_by_key(
    calls: Calls, running: Coalescer[str, int, int]
) -> None:
    first = await calls.hold(running)
    later = [asyncio.create_task(running.submit(k, v)) for k, v in [("a", 2), ("b", 4), ("a", 6)]]
    await asyncio.sleep(0.01)
    assert calls.calls == [("a", [0])]  # the rest wait: one call at a time here
    calls.gate.set()
    assert await first == 0
    assert [await t for t in later] == [20, 40, 60]
    # One batch of three, one call per key in it, in arrival order within each key.
    assert calls.calls == [("a", [0]), ("a", [2, 6]), ("b", [4])]
    assert calls.most_in_flight == 1


async def test_a_batch_takes_at_most_max_batch(
    calls: Calls, running: Coalescer[str, int, int]
) -> None:
    first = await calls.hold(running)
    later = [asyncio.create_task(running.submit("a", 2 * v)) for v in range(1, 6)]
    await calls.release(first)
    assert [await t for t in later] == [20, 40, 60, 80, 100]
    assert [values for _, values in calls.calls] == [[0], [2, 4, 6], [8, 10]]


async def test_each_caller_gets_its_own_error_and_a_raised_error_fails_its_call_only(
    calls: Calls, running: Coalescer[str, int, int]
) -> None:
    first = await calls.hold(running)
    odd = asyncio.create_task(running.submit("a", 3))
    even = asyncio.create_task(running.submit("a", 4))
    broken = [asyncio.create_task(running.submit("broken", v)) for v in (2, 8)]
    await calls.release(first)
    with pytest.raises(ValueError, match="odd 3"):
        await odd
    assert await even == 40
    for task in broken:
        with pytest.raises(ConnectionError, match="down"):
            await task
    # The pump goes on after a failed call.
    assert await asyncio.wait_for(running.submit("a", 10), 1) == 100


async def test_a_caller_that_gives_up_does_not_disturb_the_others(
    calls: Calls, running: Coalescer[str, int, int]
) -> None:
    first = await calls.hold(running)
    leaving = asyncio.create_task(running.submit("a", 2))
    staying = asyncio.create_task(running.submit("a", 4))
    await asyncio.sleep(0.01)
    leaving.cancel()
    await calls.release(first)
    assert await staying == 40
    assert leaving.cancelled()
    assert calls.calls[1] == ("a", [4])  # gone before its call started: not sent


async def test_a_caller_that_gives_up_mid_call_leaves_the_call_alone(
    calls: Calls, running: Coalescer[str, int, int]
) -> None:
    calls.gate.clear()
    leaving = asyncio.create_task(running.submit("a", 2))
    await asyncio.sleep(0.01)  # its call is in flight
    staying = asyncio.create_task(running.submit("a", 4))
    leaving.cancel()
    calls.gate.set()
    assert await staying == 40
    assert leaving.cancelled()
    assert calls.calls == [("a", [2]), ("a", [4])]


async def test_a_caller_past_its_timeout_gets_timeout_error_and_is_not_sent(
    calls: Calls, running: Coalescer[str, int, int]
) -> None:
    first = await calls.hold(running)
    late = asyncio.create_task(running.submit("a", 2, give_up_after=0.02))
    patient = asyncio.create_task(running.submit("a", 4, give_up_after=5))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(late, 1)
    await calls.release(first)
    assert await patient == 40
    assert calls.calls[1] == ("a", [4])  # timed out before its call started: not sent


async def test_a_timeout_that_is_not_reached_changes_nothing(
    calls: Calls, running: Coalescer[str, int, int]
) -> None:
    assert await running.submit("a", 2, give_up_after=5) == 20
    with pytest.raises(ValueError, match="odd 3"):
        await running.submit("a", 3, give_up_after=5)
    # A timer that already fired on a spent budget: the caller gets TimeoutError at once.
    with pytest.raises(TimeoutError):
        await running.submit("a", 6, give_up_after=0)


async def test_the_keys_of_a_batch_are_sent_concurrently(calls: Calls) -> None:
    slow = asyncio.Event()

    async def apply(key: str, values: Sequence[int]) -> list[int | Exception]:
        if key == "slow":
            await slow.wait()
        return await calls.apply(key, values)

    coalescer: Coalescer[str, int, int] = Coalescer(apply, max_in_flight=1)
    async with pumping(coalescer):
        held = asyncio.create_task(coalescer.submit("slow", 2))
        fast = asyncio.create_task(coalescer.submit("fast", 4))
        # One batch: the fast key is answered while the slow one is still in its call.
        assert await asyncio.wait_for(fast, 1) == 40
        assert not held.done()
        slow.set()
        assert await held == 20


async def test_when_the_pump_stops_every_waiting_caller_gets_an_error(calls: Calls) -> None:
    coalescer: Coalescer[str, int, int] = Coalescer(calls.apply, max_in_flight=1)
    pump = asyncio.create_task(coalescer.run())
    calls.gate.clear()
    in_call = asyncio.create_task(coalescer.submit("a", 2))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(coalescer.submit("a", 4))
    await asyncio.sleep(0.01)
    pump.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pump
    for task in (in_call, queued):
        with pytest.raises(CoalescerStoppedError):
            await asyncio.wait_for(task, 1)


async def test_calls_in_flight_are_bounded(calls: Calls) -> None:
    coalescer: Coalescer[str, int, int] = Coalescer(calls.apply, max_batch=1, max_in_flight=2)
    async with pumping(coalescer):
        calls.gate.clear()
        tasks = [asyncio.create_task(coalescer.submit("a", 2 * v)) for v in range(5)]
        await asyncio.sleep(0.02)
        assert calls.in_flight == 2
        calls.gate.set()
        assert [await t for t in tasks] == [0, 20, 40, 60, 80]
        assert calls.most_in_flight == 2
        assert len(calls.calls) == 5
