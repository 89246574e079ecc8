"""Coalescing concurrent requests into few calls to Redis and PostgreSQL.

Each request puts its item on a queue under a key and awaits its own future. A pump takes
whatever is queued (up to ``max_batch`` items) and makes one call per key, with at most
``max_in_flight`` calls at once. At low load a request is sent at once (no added delay);
under load, requests that arrive while calls are in flight share the next call, so the
Python, network and server cost of a round trip is paid once per batch instead of per
request. Two users:

* ingest (app/api/usage.py): single events keyed by tenant share one ingest script call.
  Ordering within a call is arrival order, so two requests with one idempotency key get
  the same answers as if they had been sent one after the other; except that an event
  whose hour must first be read from PostgreSQL (the per-hour bound,
  app/hotpath/bound.py) is set aside and sent again by its own request, after the rest
  of the call.
* bills (app/api/billing.py, with ``read_bills`` in app/application.py): reads keyed by
  (tenant, month) share one Redis read and one PostgreSQL statement
  (app/usage_reads.py:read_usages). Each read starts after its request was queued and
  ends before it is answered, so it is exact at an instant within the request, as a read
  of its own would be. A bill waits at most its own PostgreSQL budget (a 503 after it).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class CoalescerStoppedError(Exception):
    """The coalescer stopped (the process is shutting down) before answering: HTTP 503."""


@dataclass
class _Item(Generic[K, T, R]):
    key: K
    value: T
    future: asyncio.Future[R]


def _fail(items: Sequence[_Item[K, T, R]], exc: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)


def _expire(future: asyncio.Future[R]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("gave up waiting for the shared call"))


@dataclass
class Coalescer(Generic[K, T, R]):
    """Queue + pump. Run :meth:`run` as a supervised task for the life of the app.

    ``apply(key, values)`` returns one result per value: its outcome, or the error of that
    value alone; an exception it raises fails them all. The keys of one batch are sent
    concurrently, so a slow key (a tenant, a month) does not hold up the others. A caller
    bounds its own wait (``give_up_after``, or cancelling :meth:`submit`); its value is then left
    out of the call if that has not started. When the pump stops, every caller still
    waiting gets :class:`CoalescerStoppedError`.
    """

    apply: Callable[[K, Sequence[T]], Awaitable[Sequence[R | Exception]]]
    max_batch: int = 500
    max_in_flight: int = 4
    _queue: list[_Item[K, T, R]] = field(default_factory=list)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, key: K, value: T, *, give_up_after: float | None = None) -> R:
        """Send ``value`` in the next call for ``key``; its result (or raise its error).

        With ``give_up_after``, a caller still waiting that many seconds later gets
        :class:`TimeoutError`, and its value is left out of the call if that has not
        started. (A timer on the future: a cancel scope around the wait cost a bill
        30 µs, some 4 % of its CPU.)
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append(_Item(key, value, future))
        self._wakeup.set()
        if give_up_after is None:
            return await future
        timer = loop.call_later(give_up_after, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def run(self) -> None:
        """The pump: forever take what is queued and send it."""
        limiter = anyio.Semaphore(self.max_in_flight)
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    await self._wakeup.wait()
                    await limiter.acquire()
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                    if not self._queue:
                        self._wakeup.clear()
                    if not batch:
                        limiter.release()
                        continue
                    tg.start_soon(self._send, batch, limiter)
        finally:
            _fail(self._queue, CoalescerStoppedError("the service is stopping"))
            self._queue.clear()

    async def _send(self, batch: list[_Item[K, T, R]], limiter: anyio.Semaphore) -> None:
        try:
            by_key: dict[K, list[_Item[K, T, R]]] = defaultdict(list)
            for item in batch:
                if not item.future.done():  # its caller stopped waiting
                    by_key[item.key].append(item)
            if len(by_key) == 1:  # the usual batch: no task group to set up
                ((key, items),) = by_key.items()
                await self._call(key, items)
                return
            async with anyio.create_task_group() as tg:
                for key, items in by_key.items():
                    tg.start_soon(self._call, key, items)
        finally:
            limiter.release()

    async def _call(self, key: K, items: list[_Item[K, T, R]]) -> None:
        try:
            outcomes = await self.apply(key, [i.value for i in items])
        except Exception as exc:
            _fail(items, exc)
            return
        except BaseException:
            _fail(items, CoalescerStoppedError("the service is stopping"))
            raise
        if len(outcomes) != len(items):
            _fail(items, RuntimeError(f"{len(outcomes)} results for {len(items)} values"))
            return
        for item, outcome in zip(items, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, Exception):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
