from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from app.repo import migrations
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
