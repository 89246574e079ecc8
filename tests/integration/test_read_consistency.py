"""Bills are exact mid-flush: readers race a flusher that is SIGKILLed every few hundred ms."""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from app.apikeys import Scope
from app.hotpath.keys import HEARTBEAT
from app.repo.pool import create_pool
from app.repo.usage import rollup
from app.settings import Settings
from tests.http import client_for
from tests.integration.flush_helpers import kill, run_flush, start_flush
from tests.keys import make_key

pytestmark = pytest.mark.slow
CUSTOMER = "c:reader@test"


class Ledger:
    """What writers have had acknowledged, and what is in flight."""

    def __init__(self) -> None:
        self.acked = Decimal(0)
        self.in_flight = Decimal(0)


async def bill_quantity(client: object, customer: str = CUSTOMER) -> Decimal:
    response = await client.get(f"/api/v1/billing/{customer}")  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    lines = [line for line in response.json()["lines"] if line["type"] == "usage"]
    return sum((Decimal(line["quantity"]) for line in lines), Decimal(0))


async def test_bills_are_exact_while_a_crashing_flusher_drains(
    app: Starlette, settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    ingest = await make_key(database_url, "consistent", Scope.INGEST)
    read = await make_key(database_url, "consistent", Scope.READ)
    conn = await asyncpg.connect(database_url)
    await conn.execute("DELETE FROM usage_records WHERE tenant = 'consistent'")
    await conn.execute("DELETE FROM usage_monthly WHERE tenant = 'consistent'")
    await conn.close()
    ledger = Ledger()
    writing = True
    violations: list[str] = []
    reads = 0

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        async with client_for(app, ingest) as client:
            while writing:
                quantities = [Decimal(rng.randrange(1, 10**6)) / 10**6 for _ in range(20)]
                total = sum(quantities, Decimal(0))
                ledger.in_flight += total
                response = await client.post(
                    "/api/v1/usage/batch",
                    json={
                        "events": [
                            {
                                "customer_id": CUSTOMER,
                                "resource_type": rng.choice(["a", "b"]),
                                "quantity": str(q),
                            }
                            for q in quantities
                        ]
                    },
                )
                assert response.json()["accepted"] == 20
                ledger.in_flight -= total
                ledger.acked += total

    async def reader() -> None:
        nonlocal reads
        last = Decimal(0)
        async with client_for(app, read) as client:
            while writing:
                lower = ledger.acked
                value = await bill_quantity(client)
                upper = ledger.acked + ledger.in_flight
                reads += 1
                if not lower <= value <= upper:
                    violations.append(f"{value} outside [{lower}, {upper}]")
                if value < last:
                    violations.append(f"decreased from {last} to {value}")
                last = value

    # The customer exists (has usage) before readers start: a 404 would be right before.
    async with client_for(app, ingest) as client:
        first = await client.post(
            "/api/v1/usage", json={"customer_id": CUSTOMER, "resource_type": "a", "quantity": "1"}
        )
        assert first.status_code == 202
    ledger.acked += 1
    flusher = start_flush(settings, "--interval", "0.01")
    kills = 0
    chaos_rng = random.Random(5)
    probe = aioredis.Redis.from_url(settings.redis_url)

    async def until_cycling() -> None:
        # A flusher is up once its heartbeat (written after each cycle) names it; on a
        # loaded machine start-up takes a while, and killing it earlier tests nothing.
        seen = await probe.get(HEARTBEAT)
        for _ in range(300):
            now = await probe.get(HEARTBEAT)
            if now is not None and now != seen:
                return
            await asyncio.sleep(0.02)

    async def restart_later() -> None:
        nonlocal flusher, kills
        await until_cycling()
        # Killed at a random point of its cycles (it flushes every 10 ms once up).
        await asyncio.sleep(chaos_rng.uniform(0.05, 0.4))
        await asyncio.to_thread(kill, flusher)
        kills += 1
        flusher = start_flush(settings, "--interval", "0.01")

    async def chaos() -> None:
        while writing:
            await restart_later()

    async def roll_up() -> None:
        # Flushes older than a second fold into rows every read counts (and the monthly
        # totals bills read) while readers read: in-process reads take milliseconds, far
        # under the age, as TALLY_ROLLUP_AGE's floor ensures in production.
        pool = await create_pool(settings)
        try:
            while writing:
                await rollup(pool, 1.0, limit=20, statement_timeout=5.0)
                await asyncio.sleep(0.1)
        finally:
            await pool.close()

    try:
        tasks = [
            asyncio.create_task(t)
            for t in (writer(1), writer(2), reader(), reader(), reader(), chaos(), roll_up())
        ]
        await asyncio.sleep(6)
        writing = False
        await asyncio.gather(*tasks)
        assert violations == []
        assert reads > 50
        assert kills >= 3
        conn = await asyncpg.connect(database_url)
        flushes, rolled = await conn.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE rolled_up) FROM flushes"
            " WHERE tenant = 'consistent'"
        )
        await conn.close()
        assert flushes >= 5  # the flusher really drained while readers read
        assert rolled >= 1  # and flushes were rolled up while they read

        # Writers stopped: every read is exactly the acknowledged total, while the flusher
        # keeps draining and being killed.
        exact_reads = 0
        async with client_for(app, read) as client:
            restarts = asyncio.create_task(restart_later())
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                assert await bill_quantity(client) == ledger.acked
                exact_reads += 1
                if restarts.done():
                    restarts = asyncio.create_task(restart_later())
            await restarts
            kill(flusher)
            assert run_flush(settings, "--once").returncode == 0
            assert await bill_quantity(client) == ledger.acked
        assert exact_reads > 20
    finally:
        kill(flusher)
        await probe.aclose()
