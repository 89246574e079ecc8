"""Numbered SQL migrations: applied in order, each once, in a transaction, under a lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

# A constant key for pg_advisory_lock: every `tally migrate` serialises on it.
_LOCK_KEY = 0x7A11_0001
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``sql/NNNN_name.sql`` file."""

    version: int
    name: str
    sql: str


def migrations_dir() -> Path:
    """Where the migrations are: inside the installed package, or the source tree's sql/."""
    packaged = Path(str(resources.files("app"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """All migrations, sorted by version; refuses gaps, duplicates and stray names."""
    folder = directory or migrations_dir()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return found


async def _ensure_table(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS tally_migrations (
            version     integer PRIMARY KEY,
            name        text NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    """Versions recorded as applied (empty if the table does not exist yet)."""
    exists = await conn.fetchval("SELECT to_regclass('tally_migrations') IS NOT NULL")
    if not exists:
        return set()
    rows = await conn.fetch("SELECT version FROM tally_migrations")
    return {int(r["version"]) for r in rows}


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Apply what is missing; return what this call applied (empty when up to date).

    The session advisory lock makes concurrent runs queue: the second one finds everything
    applied and does nothing. Each migration and its record commit in one transaction.
    """
    wanted = load_migrations(directory)
    applied_now: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await _ensure_table(conn)
        done = await applied_versions(conn)
        for migration in wanted:
            if migration.version in done:
                continue
            # READ COMMITTED whatever the server's default: a statement that waits for a
            # lock (0004 waits for a running roll-up) must then see what was committed
            # meanwhile, not a snapshot taken before it waited.
            async with conn.transaction(isolation="read_committed"):
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO tally_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied_now.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def is_current(conn: asyncpg.Connection) -> bool:
    """True when every shipped migration has been applied."""
    wanted = {m.version for m in load_migrations()}
    return wanted <= await applied_versions(conn)
