"""Customers and plans of a tenant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from app.repo.errors import translated


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    """A stored customer."""

    customer_id: str
    name: str | None
    email: str | None
    plan_id: str | None
    created_at: datetime
    updated_at: datetime


_COLUMNS = "customer_id, name, email, plan_id, created_at, updated_at"


def _customer(row: asyncpg.Record) -> CustomerRecord:
    return CustomerRecord(**{k: row[k] for k in _COLUMNS.split(", ")})


async def get_customer(pool: asyncpg.Pool, tenant: str, customer_id: str) -> CustomerRecord | None:
    """The customer, or None."""
    async with translated():
        row = await pool.fetchrow(
            f"SELECT {_COLUMNS} FROM customers WHERE tenant = $1 AND customer_id = $2",  # noqa: S608
            tenant,
            customer_id,
        )
    return None if row is None else _customer(row)


async def plan_exists(pool: asyncpg.Pool, tenant: str, plan_id: str) -> bool:
    """True when the tenant has that plan."""
    async with translated():
        found = await pool.fetchval(
            "SELECT 1 FROM plans WHERE tenant = $1 AND plan_id = $2", tenant, plan_id
        )
    return found is not None


async def upsert_customer(
    pool: asyncpg.Pool, tenant: str, customer_id: str, changes: dict[str, str | None]
) -> tuple[CustomerRecord, bool]:
    """Create the customer or update the given fields; returns (record, created)."""
    fields = ("name", "email", "plan_id")
    values = [changes.get(f) for f in fields]
    given = [f in changes for f in fields]
    async with translated():
        row = await pool.fetchrow(
            f"""
            INSERT INTO customers AS c (tenant, customer_id, name, email, plan_id)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (tenant, customer_id) DO UPDATE SET
                name = CASE WHEN $6 THEN EXCLUDED.name ELSE c.name END,
                email = CASE WHEN $7 THEN EXCLUDED.email ELSE c.email END,
                plan_id = CASE WHEN $8 THEN EXCLUDED.plan_id ELSE c.plan_id END,
                updated_at = now()
            RETURNING {_COLUMNS}, (xmax = 0) AS created
            """,  # noqa: S608
            tenant,
            customer_id,
            *values,
            *given,
        )
    assert row is not None
    return _customer(row), bool(row["created"])


async def list_customers(
    pool: asyncpg.Pool, tenant: str, after: str | None, limit: int
) -> list[CustomerRecord]:
    """Customers ordered by id, after the cursor id."""
    async with translated():
        rows = await pool.fetch(
            f"""SELECT {_COLUMNS} FROM customers
                WHERE tenant = $1 AND ($2::text IS NULL OR customer_id > $2)
                ORDER BY customer_id LIMIT $3""",  # noqa: S608
            tenant,
            after,
            limit,
        )
    return [_customer(r) for r in rows]


async def upsert_plan(pool: asyncpg.Pool, tenant: str, plan_id: str, body: str) -> bool:
    """Store a validated plan document; True when it was created."""
    async with translated():
        created = await pool.fetchval(
            """INSERT INTO plans AS p (tenant, plan_id, body) VALUES ($1, $2, $3::jsonb)
               ON CONFLICT (tenant, plan_id) DO UPDATE
               SET body = EXCLUDED.body, updated_at = now()
               RETURNING (xmax = 0)""",
            tenant,
            plan_id,
            body,
        )
    return bool(created)


async def get_plan(pool: asyncpg.Pool, tenant: str, plan_id: str) -> str | None:
    """The stored plan document (JSON text), or None."""
    async with translated():
        body: str | None = await pool.fetchval(
            "SELECT body::text FROM plans WHERE tenant = $1 AND plan_id = $2", tenant, plan_id
        )
    return body


async def list_plans(
    pool: asyncpg.Pool, tenant: str, after: str | None, limit: int
) -> list[tuple[str, str]]:
    """(plan_id, document) ordered by id, after the cursor id."""
    async with translated():
        rows = await pool.fetch(
            """SELECT plan_id, body::text AS body FROM plans
               WHERE tenant = $1 AND ($2::text IS NULL OR plan_id > $2)
               ORDER BY plan_id LIMIT $3""",
            tenant,
            after,
            limit,
        )
    return [(r["plan_id"], r["body"]) for r in rows]
