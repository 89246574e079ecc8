from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
