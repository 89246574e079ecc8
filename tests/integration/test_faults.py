"""Fault scenarios with separate processes and a client that retries unknown outcomes.

`tally serve --no-flusher` and `tally flush` run as their own processes (tests/faults/); the
client keeps the truth of what must be counted (every event it sends is retried with the
same idempotency key until it gets an answer), and after each scenario the read API, the
cold store (with nothing left in Redis) and the bills must all equal that truth exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import httpx
import pytest

from tests.faults.check import assert_exact
from tests.faults.client import Client, Load, under_load
from tests.faults.injectors import FaultLog, faults, wait_for_open_flush
from tests.faults.processes import Deployment, TallyProcess, deployment

pytestmark = pytest.mark.slow


async def _three_times_then_exact(
    kind: str, then: Callable[[Deployment, Client], Awaitable[None]] | None = None
) -> None:
    """Load while the ``kind`` fault strikes three times, then exact totals (then ``then``)."""
    async with deployment() as d:
        await d.start()
        client = Client(d.api.url, d.key)
        fault = faults(d)[kind]

        async def chaos() -> None:
            for _ in range(3):
                await asyncio.sleep(0.7)
                await FaultLog().apply(fault)
            await asyncio.sleep(0.3)

        await under_load(client, chaos, Load(singles=8))
        assert client.retries > 0  # the faults really interrupted requests
        await assert_exact(d, client)
        if then is not None:
            await then(d, client)


async def test_api_sigkilled_under_load_retries_give_exact_totals() -> None:
    await _three_times_then_exact("api_sigkill")


async def _the_check_can_fail(d: Deployment, client: Client) -> None:
    # One micro-unit lost, or counted twice, is caught.
    cell = next(iter(client.truth))
    for error in (1, -1):
        client.truth[cell] += error
        with pytest.raises(AssertionError, match="1 cells differ"):
            await assert_exact(d, client)
        client.truth[cell] -= error


async def test_redis_sigkilled_under_load_loses_nothing() -> None:
    await _three_times_then_exact("redis_sigkill", then=_the_check_can_fail)


async def test_postgres_stopped_under_load_ingest_succeeds_and_bills_answer_503() -> None:
    # A short key-cache TTL, so the cached key outlives it during the outage.
    async with deployment(TALLY_KEY_CACHE_TTL="0.5") as d:
        await d.start()
        client = Client(d.api.url, d.key)
        async with client.http() as http:
            await client.ingest(http, random.Random(1))  # the API verifies and caches the key
        month = client.hours[-1].strftime("%Y-%m")
        bills: list[int] = []
        outage: list[int] = []

        async def chaos() -> None:
            await asyncio.sleep(1)
            await asyncio.to_thread(d.postgres.stop)
            outage.append(time.perf_counter_ns())
            async with client.http() as http:
                for _ in range(5):
                    await asyncio.sleep(1)
                    bills.append(await client.read_bill(http, "cust:0", month))
            outage.append(time.perf_counter_ns())
            await asyncio.to_thread(d.postgres.start)
            await asyncio.sleep(1)

        await under_load(client, chaos, Load(singles=8, batches=1, batch_size=20))
        assert bills == [503] * 5  # never a partial total while PostgreSQL is down
        during = [
            a.status
            for a in client.attempts
            if a.kind in ("single", "batch") and outage[0] <= a.started_ns <= outage[1]
        ]
        answered = sum(1 for status in during if 200 <= status < 300)
        share = Decimal(100 * answered) / len(during)
        print(
            f"PostgreSQL down {(outage[1] - outage[0]) / 1e9:.1f} s: {len(during)} ingest "
            f"requests, {answered} answered 2xx ({share:.2f}%)"
        )
        assert len(during) >= 100
        assert share >= 99
        await assert_exact(d, client)


async def test_postgres_frozen_mid_commit_then_resumed_counts_once() -> None:
    # Each commit pauses after its inserts, inside the transaction: the server is frozen
    # with a commit in flight, for longer than the flusher's timeouts.
    flusher_env = {"TALLY_FAULT_PAUSE_AT": "after_insert:0.3", "TALLY_LOG_LEVEL": "info"}
    async with deployment(flusher_env=flusher_env) as d:
        await d.start()
        client = Client(d.api.url, d.key)
        freeze = faults(d)["postgres_sigstop"]
        month = client.hours[-1].strftime("%Y-%m")
        bills: list[tuple[int, float]] = []

        async def bill_while_frozen(http: httpx.AsyncClient) -> None:
            await asyncio.sleep(0.5)
            started = time.monotonic()
            bills.append(
                (await client.read_bill(http, "cust:0", month), time.monotonic() - started)
            )

        async def chaos() -> None:
            async with client.http() as http:
                for _ in range(3):
                    await asyncio.sleep(0.5)
                    await wait_for_open_flush(d.postgres.url)
                    await asyncio.gather(FaultLog().apply(freeze), bill_while_frozen(http))
            await asyncio.sleep(1)

        await under_load(client, chaos, Load(singles=8))
        # Never a partial total while frozen, and the 503 within the contract's 2 s: the
        # request's database budget (TALLY_DATABASE_TIMEOUT, 1 s here) bounds the statement
        # and its cancel request together.
        print("bill reads while frozen answered 503 in " + ", ".join(f"{s:.2f}" for _, s in bills))
        assert [status for status, _ in bills] == [503] * 3
        assert max(took for _, took in bills) < 2
        await assert_exact(d, client)
        log = d.flusher.log.read_text()
        # Every freeze made a flush cycle time out, and the flusher carried on.
        assert log.count('"flush.failed"') >= 3, log[-3000:]
        print(
            f"flusher timed out {log.count('flush.failed')} times; "
            f"{log.count('flush.already_committed')} commits were found already done on retry"
        )


async def test_concurrent_flushers_sigkilled_under_load_count_once() -> None:
    """Three `tally flush` processes at once, one of them SIGKILLed at a random moment and
    restarted every 0.4 s under load: no lock is needed, a kill anywhere loses nothing."""
    async with deployment(flusher_env={"TALLY_LOG_LEVEL": "info"}) as d:
        await d.start()
        others = [
            TallyProcess(d.flusher.args, d.flusher.env, d.logs / f"flusher-{n}.log") for n in (2, 3)
        ]
        for flusher in others:
            flusher.start()
        flushers = [d.flusher, *others]
        client = Client(d.api.url, d.key)
        rng = random.Random(6)
        kills = 0

        async def chaos() -> None:
            nonlocal kills
            for _ in range(9):
                await asyncio.sleep(0.4)
                victim = rng.choice(flushers)
                await asyncio.to_thread(victim.kill)
                victim.start()  # from the loop's thread: the process dies with it
                kills += 1
            await asyncio.sleep(0.5)

        try:
            await under_load(client, chaos, Load(singles=8))
            await assert_exact(d, client)
        finally:
            for flusher in others:
                flusher.kill()
        assert kills == 9
        # The flushers really worked side by side: each committed flushes.
        committed = [f.log.read_text().count('"flush.committed"') for f in flushers]
        print(f"flushes committed per flusher process: {committed}")
        assert all(count > 0 for count in committed), committed
