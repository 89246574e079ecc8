"""The per-request database budget (app.repo.deadline) as translated() enforces it."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest
from starlette.types import Message, Receive, Scope, Send

from app.api.middleware import DatabaseBudgetMiddleware
from app.repo.deadline import database_budget, remaining, start_clock
from app.repo.errors import DatabaseUnavailableError, translated

BUDGET = 0.2
# Generous: these only tell "at the budget" from "at the sleep's end" (seconds later).
SLACK = 0.3


async def test_without_a_budget_nothing_is_cut_short() -> None:
    assert remaining() is None
    async with translated():
        await anyio.sleep(0.05)


async def test_one_budget_for_all_the_blocks_of_a_request() -> None:
    started = time.monotonic()
    with database_budget(BUDGET):
        async with translated():
            await anyio.sleep(BUDGET / 2)
        with pytest.raises(DatabaseUnavailableError, match="time budget spent"):
            async with translated():
                await anyio.sleep(10)
    assert time.monotonic() - started < BUDGET + SLACK


async def test_the_clock_starts_at_the_first_database_operation() -> None:
    with database_budget(BUDGET):
        await anyio.sleep(BUDGET * 1.5)  # e.g. reading the request body: not PostgreSQL's
        async with translated():
            await anyio.sleep(BUDGET / 2)


async def test_start_clock_starts_it_before_any_database_operation() -> None:
    start_clock()  # outside a budget: nothing
    assert remaining() is None
    with database_budget(BUDGET):
        start_clock()  # e.g. before a read's Redis snapshot
        await anyio.sleep(BUDGET * 1.5)
        with pytest.raises(DatabaseUnavailableError, match="time budget spent"):
            async with translated():
                await anyio.sleep(10)


async def test_nested_blocks_do_not_multiply_the_budget() -> None:
    async def nested() -> None:
        async with translated():
            async with translated():
                await anyio.sleep(10)
            await anyio.sleep(10)

    started = time.monotonic()
    with database_budget(BUDGET), pytest.raises(DatabaseUnavailableError):
        await nested()
    assert time.monotonic() - started < BUDGET + SLACK


async def test_shielded_cleanup_finishes_in_the_background() -> None:
    # asyncpg's pool release is asyncio.shield()ed and may wait seconds for a cancel
    # request to a hung server; cancellation stays on (level-triggered), so the caller
    # leaves at the deadline through every await of its clean-up.
    released = asyncio.Event()

    async def release() -> None:
        await asyncio.sleep(BUDGET * 2)
        released.set()

    async def query_then_release() -> None:
        async with translated():
            try:
                await anyio.sleep(10)
            finally:
                await asyncio.shield(release())
                await asyncio.shield(release())

    started = time.monotonic()
    with database_budget(BUDGET), pytest.raises(DatabaseUnavailableError):
        await query_then_release()
    assert time.monotonic() - started < BUDGET + SLACK
    assert not released.is_set()
    await asyncio.wait_for(released.wait(), 5)


async def test_the_middleware_gives_each_http_request_a_budget() -> None:
    seen: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(remaining())

    middleware = DatabaseBudgetMiddleware(app, seconds=BUDGET)
    await middleware({"type": "http"}, _no_receive, _no_send)
    await middleware({"type": "lifespan"}, _no_receive, _no_send)
    first, lifespan = seen
    assert first is not None
    assert 0 < first <= BUDGET
    assert lifespan is None  # tasks the lifespan starts (the flusher) have no budget
    assert remaining() is None  # nothing leaks past the request


async def _no_receive() -> Message:
    raise AssertionError("not called")


async def _no_send(message: Message) -> None:
    raise AssertionError("not called")
