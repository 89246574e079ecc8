"""Coalescing concurrent single-event requests into few ingest script calls.

Each request puts its event on a queue and awaits its own future. A pump takes whatever
is queued (up to ``max_batch`` events) and runs one script call per tenant, with at most
``max_in_flight`` calls at once. At low load a request is sent at once (no added delay);
under load, requests that arrive while calls are in flight share the next call, so the
Python and network cost of a round trip is paid once per batch instead of per request.
Ordering within a call is arrival order, so two requests with one idempotency key get the
same answers as if they had been sent one after the other; except that an event whose hour
must first be read from PostgreSQL (the per-hour bound, app/hotpath/bound.py) is set aside
and sent again by its own request, after the rest of the call.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from app.hotpath.events import Event
from app.hotpath.ingest import Outcome

# One result per event: its outcome, or the error of that event alone (an hour that could
# not be seeded, app/hotpath/ingest.py:apply_each); an exception raised fails them all.
Apply = Callable[[str, Sequence[Event]], Awaitable[Sequence[Outcome | Exception]]]


@dataclass
class _Item:
    tenant: str
    event: Event
    future: asyncio.Future[Outcome]


@dataclass
class Coalescer:
    """Queue + pump. Run :meth:`run` as a supervised task for the life of the app."""

    apply: Apply
    max_batch: int = 500
    max_in_flight: int = 4
    _queue: list[_Item] = field(default_factory=list)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, tenant: str, event: Event) -> Outcome:
        """Count ``event`` and return its outcome (or raise what the script call raised)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(tenant, event, future))
        self._wakeup.set()
        return await future

    async def run(self) -> None:
        """The pump: forever take what is queued and send it."""
        limiter = anyio.Semaphore(self.max_in_flight)
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

    async def _send(self, batch: list[_Item], limiter: anyio.Semaphore) -> None:
        try:
            by_tenant: dict[str, list[_Item]] = defaultdict(list)
            for item in batch:
                by_tenant[item.tenant].append(item)
            for tenant, items in by_tenant.items():
                try:
                    outcomes = await self.apply(tenant, [i.event for i in items])
                except Exception as exc:
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item, outcome in zip(items, outcomes, strict=True):
                    if item.future.done():
                        continue
                    if isinstance(outcome, Exception):
                        item.future.set_exception(outcome)
                    else:
                        item.future.set_result(outcome)
        finally:
            limiter.release()
