"""The one asyncpg pool of a process, and single connections for one-off commands."""

from __future__ import annotations

import asyncpg

from app.settings import Settings

# Every connection's session is in UTC, whatever the server's or role's default TimeZone:
# Tally's hours and months are UTC ones, and in a session TimeZone such as Asia/Kolkata
# (+05:30) any expression that does not say 'UTC' would truncate to local hours.
_UTC = {"TimeZone": "UTC"}


async def _reset(conn: asyncpg.Connection) -> None:
    # The default reset runs RESET ALL, UNLISTEN, CLOSE ALL and unlocks session advisory
    # locks: a round trip on every release. Tally sets no session state on pooled
    # connections (its advisory locks are transaction-scoped), so only an unfinished
    # transaction needs undoing.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(settings: Settings, *, min_size: int = 0) -> asyncpg.Pool:
    """Create the process's pool.

    ``min_size=0`` opens connections lazily, so an API process starts (and serves ingest
    from Redis) while PostgreSQL is still coming up; ``/ready`` says when it is reachable.
    Every statement gets the settings' timeout so a hung database answers 503, not never.
    """
    timeout = settings.database_timeout
    pool = await asyncpg.create_pool(
        dsn=settings.database_url,
        min_size=min_size,
        max_size=settings.database_pool_size,
        timeout=timeout,
        command_timeout=timeout,
        max_inactive_connection_lifetime=60.0,
        server_settings={"application_name": "tally", **_UTC},
        reset=_reset,
    )
    assert pool is not None
    return pool


async def connect(settings: Settings) -> asyncpg.Connection:
    """One connection for a one-off command (migrate, keys), in UTC like the pool's."""
    return await asyncpg.connect(
        settings.database_url,
        timeout=settings.startup_timeout,
        server_settings=dict(_UTC),
    )
