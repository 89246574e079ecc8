"""The roll-up folds per-flush rows into one row per hour, keeps the monthly totals bills
read, and keeps every total exact."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from app import usage_reads
from app.apikeys import Scope
from app.hotpath.keys import shard_of
from app.repo.pool import create_pool
from app.repo.usage import ColdKey, ColdRead, UsageRow, commit_flush, read_cold, rollup
from app.scripts import Scripts
from app.settings import Settings
from app.timestamps import Period
from app.usage_reads import read_customer_usage, read_usages
from app.worker.flusher import Flusher
from tests.integration.flush_helpers import Truth, cold_totals, ingest_random
from tests.keys import make_key

TIMEOUT = 10.0  # statement time-outs of commits and roll-ups


@pytest.fixture
async def tenant(database_url: str, redis: aioredis.Redis) -> str:
    await make_key(database_url, "acme", Scope.INGEST)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE usage_records, usage_monthly, flushes")
    finally:
        await conn.close()
    return "acme"


async def assert_monthly_matches_rolled_rows(conn: asyncpg.Connection) -> None:
    """usage_monthly's invariant: each UTC month's total of the seq = 0 rows."""
    rolled = await conn.fetch(
        """SELECT tenant, customer_id, resource_type, bucket_start, quantity
           FROM usage_records WHERE seq = 0"""
    )
    expected: Counter[tuple[str, str, datetime, str]] = Counter()
    for r in rolled:
        month = r["bucket_start"].astimezone(UTC).replace(day=1, hour=0)
        expected[(r["tenant"], r["customer_id"], month, r["resource_type"])] += r["quantity"]
    monthly = await conn.fetch(
        "SELECT tenant, customer_id, month, resource_type, quantity FROM usage_monthly"
    )
    assert {(r[0], r[1], r[2], r[3]): r[4] for r in monthly} == dict(expected)


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
        # Nothing is old enough yet.
        assert await rollup(pool, older_than=3600, statement_timeout=TIMEOUT) == 0
        folded = await rollup(pool, older_than=0, statement_timeout=TIMEOUT)
        assert folded == await conn.fetchval("SELECT count(*) FROM flushes")
        after_rows = await conn.fetchval("SELECT count(*) FROM usage_records")
        assert after_rows < before_rows
        assert after_rows == len(truth)  # one row per (customer, resource, hour)
        assert await conn.fetchval("SELECT count(*) FROM usage_records WHERE seq > 0") == 0
        assert await cold_totals(database_url) == truth
        await assert_monthly_matches_rolled_rows(conn)
        bill_after = await read_customer_usage(
            scripts, pool, "acme", "cust:1", now.first_hour - 24 * 40, now.end_hour
        )
        assert bill_after.buckets == bill_before.buckets
        # Later flushes and a second roll-up merge into the rolled-up rows.
        await ingest_random(redis, truth, events=200, customers=5, rng=random.Random(9))
        await flusher.cycle()
        await rollup(pool, older_than=0, statement_timeout=TIMEOUT)
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == len(truth)
        assert await cold_totals(database_url) == truth
        await assert_monthly_matches_rolled_rows(conn)
        await conn.close()
    finally:
        await pool.close()


async def test_monthly_totals_follow_utc_months_whatever_the_session_timezone(
    database_url: str, tenant: str
) -> None:
    # A session at UTC+14: 2026-01-31 23:00Z is already February there, so a month taken in
    # the session's zone would move January's last hour into February's bill.
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"timezone": "Pacific/Kiritimati"}
    )
    assert pool is not None
    january, february = Period.of_month(2026, 1), Period.of_month(2026, 2)
    last_of_january = february.start - timedelta(hours=1)
    rows = [
        UsageRow("c-tz", "api", last_of_january, Decimal("1.5")),
        UsageRow("c-tz", "api", february.start, Decimal("2.25")),
        UsageRow("c-tz", "api", january.start, Decimal("4")),
    ]
    try:
        await commit_flush(
            pool, tenant, 3, 1, "f-1", datetime.now(UTC), rows, statement_timeout=TIMEOUT
        )
        seen = {}
        for stage in ("before", "after"):
            if stage == "after":
                assert await rollup(pool, older_than=0, statement_timeout=TIMEOUT) == 1
            for period in (january, february):
                (cold,) = await read_cold(
                    pool, tenant, period.start, period.end, [ColdKey("c-tz", 3, 1, 0)], monthly=True
                )
                seen[(stage, period.start.month)] = cold.buckets
        expected = {
            1: {("api", january.start): Decimal("5.5")},
            2: {("api", february.start): Decimal("2.25")},
        }
        for stage in ("before", "after"):
            assert {m: seen[(stage, m)] for m in (1, 2)} == expected, stage
        async with pool.acquire() as conn:
            await assert_monthly_matches_rolled_rows(conn)
            assert await conn.fetchval("SELECT count(*) FROM usage_monthly") == 2
    finally:
        await pool.close()


async def test_monthly_read_sees_unrolled_flushes_by_the_read_rule(
    settings: Settings, database_url: str, tenant: str
) -> None:
    """Rolled-up months plus flushes not rolled up yet, filtered by the shard's seq."""
    pool = await create_pool(settings)
    period = Period.of_month(2026, 3)
    hour = period.start + timedelta(hours=5)
    try:
        await commit_flush(
            pool,
            tenant,
            2,
            1,
            "f-1",
            hour,
            [UsageRow("c-r", "api", hour, Decimal(1))],
            statement_timeout=TIMEOUT,
        )
        assert await rollup(pool, older_than=0, statement_timeout=TIMEOUT) == 1
        for seq, quantity in ((2, "10"), (3, "100")):
            row = UsageRow("c-r", "api", hour, Decimal(quantity))
            await commit_flush(
                pool, tenant, 2, seq, f"f-{seq}", hour, [row], statement_timeout=TIMEOUT
            )
        # A read at seq s counts the rolled-up month and the shard's flushes up to s.
        for seq, total in ((1, "1"), (2, "11"), (3, "111")):
            (cold,) = await read_cold(
                pool, tenant, period.start, period.end, [ColdKey("c-r", 2, seq, 0)], monthly=True
            )
            assert cold.buckets == {("api", period.start): Decimal(total)}, seq
        with pytest.raises(ValueError, match="calendar month"):
            await read_cold(
                pool,
                tenant,
                period.start,
                period.end - timedelta(hours=1),
                [ColdKey("c-r", 2, 3, 0)],
                monthly=True,
            )
    finally:
        await pool.close()


async def test_rollup_folds_bounded_batches_oldest_first(
    settings: Settings, database_url: str, tenant: str
) -> None:
    """About ``max_rows`` rows per call (at least one flush, however large), oldest first;
    repeated calls fold everything and keep every total."""
    pool = await create_pool(settings)
    hour = Period.of_month(2026, 4).start
    sizes = [3, 3, 3, 3, 3, 3, 12]
    try:
        for seq, size in enumerate(sizes, start=1):
            rows = [UsageRow(f"c-{i}", "api", hour, Decimal(seq)) for i in range(size)]
            await commit_flush(
                pool, tenant, 1, seq, f"f-{seq}", hour, rows, statement_timeout=TIMEOUT
            )
        batches = []
        while folded := await rollup(pool, 0, max_rows=7, statement_timeout=TIMEOUT):
            batches.append(folded)
        # A flush is taken while the rows before it in the batch are under 7: 3 + 3 + 3,
        # 3 + 3 + 3, then the 12-row flush alone.
        assert batches == [3, 3, 1]
        conn = await asyncpg.connect(database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM flushes WHERE NOT rolled_up") == 0
            totals = dict(
                await conn.fetch("SELECT customer_id, sum(quantity) FROM usage_records GROUP BY 1")
            )
            await assert_monthly_matches_rolled_rows(conn)
        finally:
            await conn.close()
        assert totals == {f"c-{i}": Decimal(sum(range(1, 8))) for i in range(3)} | {
            f"c-{i}": Decimal(7) for i in range(3, 12)
        }
    finally:
        await pool.close()


@pytest.mark.parametrize("monthly", [False, True])
async def test_a_read_that_races_a_roll_up_is_made_again(
    settings: Settings,
    redis: aioredis.Redis,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
    monthly: bool,
) -> None:
    """A read delayed between its Redis and PostgreSQL snapshots (longer than
    TALLY_ROLLUP_AGE) while the data it read hot is flushed and rolled up would count that
    data twice; the statement notices and the read is made again."""
    truth: Truth = Counter()
    await ingest_random(redis, truth, events=300, customers=3, rng=random.Random(5))
    pool = await create_pool(settings)
    try:
        flusher = Flusher(settings, redis, pool)
        calls: list[int] = []

        async def meanwhile(seq: int) -> None:
            calls.append(seq)  # the shard's seq at the Redis read
            if len(calls) == 1:  # meanwhile: a flush, and its roll-up
                await flusher.flush_all(lease_wait=1.0)
                assert await rollup(pool, older_than=0, statement_timeout=TIMEOUT) >= 1

        async def delayed(*args: Any, **kwargs: Any) -> list[ColdRead]:
            (key,) = args[4]
            await meanwhile(key.seq)
            return await read_cold(*args, **kwargs)

        monkeypatch.setattr(usage_reads, "read_cold", delayed)
        period = Period.containing(datetime.now(UTC))
        first, end = (period.first_hour, period.end_hour) if monthly else (0, period.end_hour)
        usage = await read_customer_usage(
            Scripts.register(redis), pool, "acme", "cust:0", first, end, monthly=monthly
        )
        assert len(calls) == 2  # made again...
        assert calls[1] > calls[0]  # ...after the flush
        expected: Counter[str] = Counter()
        for (_, customer, resource, hour), micro in truth.items():
            if customer == "cust:0" and first <= int(hour.timestamp()) // 3600 < end:
                expected[resource] += micro
        seen = {r: int(q * 1_000_000) for r, q in usage.per_resource().items()}
        assert seen == dict(+expected)
    finally:
        await pool.close()


async def test_a_shared_read_reads_again_only_the_customers_that_raced(
    settings: Settings,
    redis: aioredis.Redis,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bills sharing one read (app/coalescer.py): a roll-up racing the read of one
    customer's shard makes that customer's read be made again, and only that one; the
    others' first reads stand, and every customer's usage is exact."""
    truth: Truth = Counter()
    await ingest_random(redis, truth, events=400, customers=20, rng=random.Random(11))
    by_shard = {shard_of(f"cust:{n}"): f"cust:{n}" for n in range(20)}
    assert len(by_shard) >= 3
    customers = list(by_shard.values())[:3]
    racer = customers[1]
    pool = await create_pool(settings)
    try:
        flusher = Flusher(settings, redis, pool)
        rounds: list[list[str]] = []

        async def delayed(*args: Any, **kwargs: Any) -> list[ColdRead]:
            rounds.append([key.customer_id for key in args[4]])
            if len(rounds) == 1:  # meanwhile: the racer's shard flushed and rolled up
                await flusher.flush_shard("acme", shard_of(racer), lease_wait=1.0)
                assert await rollup(pool, older_than=0, statement_timeout=TIMEOUT) >= 1
            return await read_cold(*args, **kwargs)

        monkeypatch.setattr(usage_reads, "read_cold", delayed)
        period = Period.containing(datetime.now(UTC))
        usages = await read_usages(
            Scripts.register(redis),
            pool,
            "acme",
            customers,
            period.first_hour,
            period.end_hour,
            monthly=True,
        )
        assert rounds == [customers, [racer]]
        for customer, usage in zip(customers, usages, strict=True):
            assert not isinstance(usage, Exception)
            expected: Counter[str] = Counter()
            for (_, who, resource, hour), micro in truth.items():
                if who == customer and period.first_hour <= int(hour.timestamp()) // 3600:
                    expected[resource] += micro
            seen = {r: int(q * 1_000_000) for r, q in usage.per_resource().items()}
            assert seen == dict(+expected), customer
    finally:
        await pool.close()
