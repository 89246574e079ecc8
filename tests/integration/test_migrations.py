from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from app.repo import migrations
from app.repo.usage import ROLLUP_LOCK, rollup
from tests.servers import PostgresCluster


@pytest.fixture
async def empty_db(postgres: PostgresCluster) -> AsyncIterator[str]:
    url = await postgres.empty()
    yield url
    await postgres.drop(url)


async def test_apply_twice_is_a_noop(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        first = await migrations.migrate(conn)
        assert [m.version for m in first] == [m.version for m in migrations.load_migrations()]
        assert await migrations.is_current(conn)
        second = await migrations.migrate(conn)
        assert second == []
        count = await conn.fetchval("SELECT count(*) FROM tally_migrations")
        assert count == len(first)
    finally:
        await conn.close()


async def test_concurrent_runs_both_succeed(empty_db: str) -> None:
    conns = [await asyncpg.connect(empty_db) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c) for c in conns))
        applied = [len(r) for r in results]
        assert sorted(applied) == [0, 0, 0, len(migrations.load_migrations())]
        assert await migrations.is_current(conns[0])
    finally:
        for c in conns:
            await c.close()


async def test_not_current_before_migrating(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        assert not await migrations.is_current(conn)
    finally:
        await conn.close()


async def test_schema_has_the_contract_columns(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT column_name, data_type FROM information_schema.columns
               WHERE table_name = 'usage_records'"""
        )
    finally:
        await conn.close()
    columns = {r["column_name"]: r["data_type"] for r in rows}
    assert columns["tenant"] == "text"
    assert columns["customer_id"] == "text"
    assert columns["resource_type"] == "text"
    assert columns["bucket_start"] == "timestamp with time zone"
    assert columns["quantity"] == "numeric"


def test_bad_names_refused(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "0001_ok.sql").write_text("SELECT 1;")
    (folder / "0003_gap.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="without gaps"):
        migrations.load_migrations(folder)


async def test_monthly_totals_backfilled_from_rolled_up_rows(empty_db: str, tmp_path: Path) -> None:
    """0004 fills usage_monthly from the rolled-up rows already there (UTC months)."""
    for migration in migrations.load_migrations()[:3]:
        (tmp_path / f"{migration.version:04d}_{migration.name}.sql").write_text(migration.sql)
    conn = await asyncpg.connect(empty_db, server_settings={"timezone": "America/Los_Angeles"})
    try:
        await migrations.migrate(conn, tmp_path)
        await conn.executemany(
            """INSERT INTO usage_records
                   (tenant, customer_id, resource_type, bucket_start, quantity, shard, seq)
               VALUES ('t', 'c', 'api', $1, $2, $3, $4)""",
            [
                (datetime(2026, 1, 1, 0, tzinfo=UTC), Decimal("1.5"), 0, 0),
                (datetime(2026, 1, 31, 23, tzinfo=UTC), Decimal(2), 0, 0),
                (datetime(2026, 2, 1, 0, tzinfo=UTC), Decimal(4), 0, 0),
                (datetime(2026, 2, 1, 1, tzinfo=UTC), Decimal(8), 5, 7),  # not rolled up
            ],
        )
        await migrations.migrate(conn)
        rows = await conn.fetch("SELECT month, quantity FROM usage_monthly ORDER BY month")
    finally:
        await conn.close()
    assert [(r["month"], r["quantity"]) for r in rows] == [
        (datetime(2026, 1, 1, tzinfo=UTC), Decimal("3.5")),
        (datetime(2026, 2, 1, tzinfo=UTC), Decimal(4)),
    ]


# The roll-up of the code before migration 0004 (commit 7f2eaf1), which knows nothing of
# usage_monthly: after 0004 it must fail rather than under-bill.
_ROLLUP_BEFORE_0004 = """
    WITH picked AS (
        SELECT tenant, shard, seq FROM flushes
        WHERE NOT rolled_up AND committed_at < now() - make_interval(secs => $1)
        ORDER BY committed_at
        LIMIT $2
    ), marked AS (
        UPDATE flushes f SET rolled_up = true
        FROM picked p
        WHERE f.tenant = p.tenant AND f.shard = p.shard AND f.seq = p.seq
        RETURNING f.tenant, f.shard, f.seq
    ), moved AS (
        DELETE FROM usage_records u
        USING marked m
        WHERE u.tenant = m.tenant AND u.shard = m.shard AND u.seq = m.seq
        RETURNING u.tenant, u.customer_id, u.resource_type, u.bucket_start, u.quantity
    ), folded AS (
        INSERT INTO usage_records
            (tenant, customer_id, resource_type, bucket_start, quantity, shard, seq)
        SELECT tenant, customer_id, resource_type, bucket_start, sum(quantity), 0, 0
        FROM moved
        GROUP BY tenant, customer_id, resource_type, bucket_start
        ON CONFLICT (tenant, customer_id, resource_type, bucket_start) WHERE seq = 0
        DO UPDATE SET quantity = usage_records.quantity + EXCLUDED.quantity
        RETURNING 1
    )
    SELECT count(*) FROM marked
"""


async def test_a_roll_up_from_before_0004_fails_and_changes_nothing(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        await migrations.migrate(conn)
        await conn.execute(
            """INSERT INTO flushes (tenant, shard, seq, flush_id, fields, drained_at, committed_at)
               VALUES ('t', 3, 1, 'f1', 1, now(), now() - interval '2 hours')"""
        )
        await conn.execute(
            """INSERT INTO usage_records
                   (tenant, customer_id, resource_type, bucket_start, quantity, shard, seq)
               VALUES ('t', 'c', 'api', '2026-01-01T05:00:00Z', 7, 3, 1)"""
        )
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="usage_monthly"):
            await conn.fetchval(_ROLLUP_BEFORE_0004, 60.0, 10)
        rows = await conn.fetch("SELECT quantity, shard, seq FROM usage_records")
        assert [tuple(r) for r in rows] == [(Decimal(7), 3, 1)]
        assert await conn.fetchval("SELECT count(*) FROM usage_monthly") == 0
        assert not await conn.fetchval("SELECT rolled_up FROM flushes")
        # The same data rolls up with today's roll-up, monthly total included.
        pool = await asyncpg.create_pool(empty_db, min_size=1, max_size=1)
        try:
            assert await rollup(pool, 60.0, statement_timeout=5.0) == 1
        finally:
            await pool.close()
        rows = await conn.fetch("SELECT quantity, shard, seq FROM usage_records")
        assert [tuple(r) for r in rows] == [(Decimal(7), 0, 0)]
        assert await conn.fetchval("SELECT sum(quantity) FROM usage_monthly") == Decimal(7)
    finally:
        await conn.close()


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read"])
async def test_0004_waits_for_a_running_roll_up(
    empty_db: str, tmp_path: Path, isolation: str
) -> None:
    """The backfill must see every rolled-up row: a roll-up holding its lock finishes
    before 0004 reads them — whatever the server's default isolation (under repeatable
    read a snapshot taken before the wait would miss the roll-up's rows)."""
    for migration in migrations.load_migrations()[:3]:
        (tmp_path / f"{migration.version:04d}_{migration.name}.sql").write_text(migration.sql)
    conn = await asyncpg.connect(
        empty_db, server_settings={"default_transaction_isolation": isolation}
    )
    roller = await asyncpg.connect(empty_db)
    try:
        await migrations.migrate(conn, tmp_path)
        async with roller.transaction():
            assert await roller.fetchval("SELECT pg_try_advisory_xact_lock($1)", ROLLUP_LOCK)
            migrating = asyncio.create_task(migrations.migrate(conn))
            await asyncio.sleep(0.5)
            assert not migrating.done()
            # What the old roll-up was writing when 0004 started.
            await roller.execute(
                """INSERT INTO usage_records
                       (tenant, customer_id, resource_type, bucket_start, quantity, shard, seq)
                   VALUES ('t', 'c', 'api', '2026-03-04T05:00:00Z', 9, 0, 0)"""
            )
        applied = await asyncio.wait_for(migrating, 30)
        assert applied[0].version == 4
        total = await conn.fetchval("SELECT sum(quantity) FROM usage_monthly")
        assert total == Decimal(9)
    finally:
        await roller.close()
        await conn.close()


async def test_bucket_start_is_checked_in_utc_whatever_the_session_timezone(
    empty_db: str, tmp_path: Path
) -> None:
    """0002's CHECK truncated to hours in the session's TimeZone: at +05:30 it refused every
    UTC hour start (so every flush) and took half past as an hour. 0005 checks in UTC."""
    for migration in migrations.load_migrations()[:4]:
        (tmp_path / f"{migration.version:04d}_{migration.name}.sql").write_text(migration.sql)
    utc_hour = datetime(2026, 11, 1, 10, tzinfo=UTC)  # 15:30 in Kolkata
    kolkata_hour = datetime(2026, 11, 1, 10, 30, tzinfo=UTC)  # 16:00 in Kolkata
    insert = """INSERT INTO usage_records
                    (tenant, customer_id, resource_type, bucket_start, quantity, shard, seq)
                VALUES ('t', 'c', 'api', $1, 1, 1, 1)"""
    conn = await asyncpg.connect(empty_db, server_settings={"timezone": "Asia/Kolkata"})
    try:
        await migrations.migrate(conn, tmp_path)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, utc_hour)
        await conn.execute(insert, kolkata_hour)
        await conn.execute("DELETE FROM usage_records")
        applied = await migrations.migrate(conn)
        assert applied[0].version == 5
        await conn.execute(insert, utc_hour)
        with pytest.raises(asyncpg.CheckViolationError, match="usage_records_bucket_start_utc"):
            await conn.execute(insert, kolkata_hour)
        rows = await conn.fetch("SELECT bucket_start FROM usage_records")
    finally:
        await conn.close()
    assert [r["bucket_start"] for r in rows] == [utc_hour]
