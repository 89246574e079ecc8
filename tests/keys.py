"""Creating API keys in a test database."""

from __future__ import annotations

import asyncpg

from app import apikeys
from app.apikeys import Scope
from app.repo import tenants


async def make_key(
    database_url: str, tenant: str, scope: Scope, customer_id: str | None = None
) -> str:
    """A new key for ``tenant`` (created if missing); returns the key text."""
    new = apikeys.generate()
    conn = await asyncpg.connect(database_url)
    try:
        await tenants.create_key(conn, tenant, scope, new, customer_id)
    finally:
        await conn.close()
    return new.text
