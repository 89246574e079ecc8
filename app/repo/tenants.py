"""Tenants and API keys in PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from app.apikeys import NewKey, Scope
from app.repo.errors import translated


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored API key (without its text)."""

    key_id: str
    tenant: str
    scope: Scope
    customer_id: str | None
    secret_hash: bytes
    revoked: bool


async def create_key(
    conn: asyncpg.Connection,
    tenant: str,
    scope: Scope,
    new: NewKey,
    customer_id: str | None = None,
    name: str | None = None,
) -> None:
    """Create ``tenant`` if missing and store ``new`` for it, in one transaction."""
    async with translated(), conn.transaction():
        await conn.execute(
            "INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", tenant
        )
        await conn.execute(
            """INSERT INTO api_keys (key_id, tenant, scope, customer_id, name, secret_hash)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            new.key_id,
            tenant,
            scope.value,
            customer_id,
            name,
            new.secret_hash,
        )


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> bool:
    """Revoke a key by id; False when no such live key exists."""
    async with translated():
        status: str = await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
            key_id,
        )
    return status.endswith(" 1")


async def find_key(pool: asyncpg.Pool, key_id: str) -> KeyRecord | None:
    """The key with this id (revoked ones included, so callers can tell), or None."""
    async with translated():
        row = await pool.fetchrow(
            """SELECT key_id, tenant, scope, customer_id, secret_hash, revoked_at IS NOT NULL
                      AS revoked
               FROM api_keys WHERE key_id = $1""",
            key_id,
        )
    if row is None:
        return None
    return KeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        scope=Scope(row["scope"]),
        customer_id=row["customer_id"],
        secret_hash=bytes(row["secret_hash"]),
        revoked=row["revoked"],
    )


async def list_tenants(pool: asyncpg.Pool) -> list[str]:
    """Every tenant name."""
    async with translated():
        rows = await pool.fetch("SELECT name FROM tenants ORDER BY name")
    return [r["name"] for r in rows]
