"""The roll-up folds per-flush rows into one row per hour and keeps every total exact."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.apikeys import Scope
from app.repo.pool import create_pool
from app.repo.usage import rollup
from app.scripts import Scripts
from app.settings import Settings
from app.timestamps import Period
from app.usage_reads import read_customer_usage
from app.worker.flusher import Flusher
from tests.integration.flush_helpers import Truth, cold_totals, ingest_random
from tests.keys import make_key


@pytest.fixture
async def tenant(database_url: str, redis: aioredis.Redis) -> str:
    await make_key(database_url, "acme", Scope.INGEST)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE usage_records, flushes")
    finally:
        await conn.close()
    return "acme"


async def test_rollup_compacts_rows_and_keeps_totals(
    settings: Settings, redis: aioredis.Redis, database_url: str, tenant: str
) -> None:
    truth: Truth = Counter()
    pool = await create_pool(settings)
    try:
        flusher = Flusher(settings, redis, pool)
        for i in range(4):
            await ingest_random(redis, truth, events=200, customers=5, rng=random.Random(i))
            await flusher.cycle()
        conn = await asyncpg.connect(database_url)
        before_rows = await conn.fetchval("SELECT count(*) FROM usage_records")
        scripts = Scripts.register(redis)
        now = Period.containing(datetime.now(UTC))
        bill_before = await read_customer_usage(
            scripts, pool, "acme", "cust:1", now.first_hour - 24 * 40, now.end_hour
        )
        assert await rollup(pool, older_than=3600) == 0  # nothing is old enough yet
        folded = await rollup(pool, older_than=0)
        assert folded == await conn.fetchval("SELECT count(*) FROM flushes")
        after_rows = await conn.fetchval("SELECT count(*) FROM usage_records")
        assert after_rows < before_rows
        assert after_rows == len(truth)  # one row per (customer, resource, hour)
        assert await conn.fetchval("SELECT count(*) FROM usage_records WHERE seq > 0") == 0
        assert await cold_totals(database_url) == truth
        bill_after = await read_customer_usage(
            scripts, pool, "acme", "cust:1", now.first_hour - 24 * 40, now.end_hour
        )
        assert bill_after.buckets == bill_before.buckets
        # Later flushes and a second roll-up merge into the rolled-up rows.
        await ingest_random(redis, truth, events=200, customers=5, rng=random.Random(9))
        await flusher.cycle()
        await rollup(pool, older_than=0)
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == len(truth)
        assert await cold_totals(database_url) == truth
        await conn.close()
    finally:
        await pool.close()
