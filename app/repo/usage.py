"""The cold store: committing flushes exactly once, reading a customer's flushed usage,
and rolling old flush rows up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import NamedTuple

import asyncpg

from app.repo.errors import translated

Checkpoint = Callable[[str], Awaitable[None]]


class CommitOutcome(Enum):
    """What :func:`commit_flush` did."""

    COMMITTED = "committed"
    ALREADY_COMMITTED = "already_committed"


class SequenceAnomalyError(Exception):
    """PostgreSQL holds flushes that the Redis state contradicts (Redis wiped or restored).

    Committing would count usage twice, so the flusher halts instead.
    """


class UsageRow(NamedTuple):
    """One (customer, resource type, hour) quantity of a flush (a tuple: flushes build
    one per meter field)."""

    customer_id: str
    resource_type: str
    bucket_start: datetime
    quantity: Decimal


async def _no_checkpoint(name: str) -> None:
    return None


async def commit_flush(
    pool: asyncpg.Pool,
    tenant: str,
    shard: int,
    seq: int,
    flush_id: str,
    drained_at: datetime,
    rows: Sequence[UsageRow],
    checkpoint: Checkpoint = _no_checkpoint,
) -> CommitOutcome:
    """Write a drained flush in one transaction, once.

    The flush row's primary key (tenant, shard, seq) is the idempotency: if it exists with
    the same flush id, an earlier attempt committed (a crash before the ack) and nothing is
    written again. The same seq with another flush id, or a higher seq already committed,
    means Redis went back in time: :class:`SequenceAnomalyError`.
    """
    async with translated(), pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            """INSERT INTO flushes (tenant, shard, seq, flush_id, fields, drained_at)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (tenant, shard, seq) DO NOTHING
               RETURNING seq""",
            tenant,
            shard,
            seq,
            flush_id,
            len(rows),
            drained_at,
        )
        if inserted is None:
            existing = await conn.fetchval(
                "SELECT flush_id FROM flushes WHERE tenant = $1 AND shard = $2 AND seq = $3",
                tenant,
                shard,
                seq,
            )
            if existing == flush_id:
                return CommitOutcome.ALREADY_COMMITTED
            raise SequenceAnomalyError(
                f"tenant {tenant!r} shard {shard}: flush seq {seq} was already committed by "
                f"another flush ({existing}); Redis lost its flush state (wiped, or restored "
                "from an old snapshot). Refusing to flush: it would count usage twice."
            )
        highest = await conn.fetchval(
            "SELECT max(seq) FROM flushes WHERE tenant = $1 AND shard = $2", tenant, shard
        )
        if highest is not None and highest > seq:
            raise SequenceAnomalyError(
                f"tenant {tenant!r} shard {shard}: Redis's flush seq {seq} is behind the "
                f"committed seq {highest}; Redis went back in time (wiped, or restored from "
                "an old snapshot). Refusing to flush: it would count usage twice."
            )
        if rows:
            await conn.copy_records_to_table(
                "usage_records",
                columns=[
                    "tenant",
                    "customer_id",
                    "resource_type",
                    "bucket_start",
                    "quantity",
                    "shard",
                    "seq",
                ],
                records=[(tenant, *row, shard, seq) for row in rows],
            )
        await checkpoint("after_insert")
    return CommitOutcome.COMMITTED


async def rollup(pool: asyncpg.Pool, older_than: float, limit: int = 500) -> int:
    """Fold the rows of flushes committed more than ``older_than`` seconds ago into one row
    per (tenant, customer, resource type, hour) with seq 0; returns flushes folded.

    One statement, so one transaction: a reader sees the rows either before or after.
    Rolled-up rows are always counted by reads; the age keeps a read that saw a flush's
    seq as "not yet flushed" (a few ms earlier) from ever seeing its rows as seq 0.
    """
    async with translated(), pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", 0x7A11_0002):
            return 0
        folded = await conn.fetchval(
            """
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
            """,
            float(older_than),
            limit,
        )
    return int(folded or 0)


@dataclass(frozen=True, slots=True)
class ColdRead:
    """A customer's flushed usage in a range, and what the read rule needs to know."""

    buckets: dict[tuple[str, datetime], Decimal]
    pending_committed: bool
    any_usage: bool
    customer_exists: bool
    plan_id: str | None
    plan_body: str | None


_READ_COLD = """
    WITH cold AS (
        SELECT resource_type, {bucket} AS bucket_start, sum(quantity) AS quantity
        FROM usage_records
        WHERE tenant = $1 AND customer_id = $2
          AND bucket_start >= $3 AND bucket_start < $4
          AND (seq = 0 OR (shard = $5 AND seq <= $6))
        GROUP BY {group}
    )
    SELECT
        EXISTS (SELECT 1 FROM flushes
                WHERE tenant = $1 AND shard = $5 AND seq = $7) AS pending_committed,
        EXISTS (SELECT 1 FROM usage_records
                WHERE tenant = $1 AND customer_id = $2) AS any_usage,
        c.customer_id IS NOT NULL AS customer_exists,
        c.plan_id,
        p.body::text AS plan_body,
        NULL::text AS resource_type, NULL::timestamptz AS bucket_start,
        NULL::numeric AS quantity
    FROM (SELECT 1) AS one
    LEFT JOIN customers c ON c.tenant = $1 AND c.customer_id = $2
    LEFT JOIN plans p ON p.tenant = c.tenant AND p.plan_id = c.plan_id
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, resource_type, bucket_start, quantity FROM cold
"""
# Per hour for usage series; per resource type (one row each) for bills.
_READ_COLD_BY_HOUR = _READ_COLD.format(bucket="bucket_start", group="resource_type, bucket_start")
_READ_COLD_TOTALS = _READ_COLD.format(bucket="$3::timestamptz", group="resource_type")


async def read_cold(
    pool: asyncpg.Pool,
    tenant: str,
    customer_id: str,
    shard: int,
    start: datetime,
    end: datetime,
    seq: int,
    pending_seq: int,
    *,
    by_hour: bool = True,
) -> ColdRead:
    """One statement: the customer's flushed rows in ``[start, end)`` visible under the
    read rule, whether the pending flush ``pending_seq`` is already committed, and the
    customer's record and plan (the first row; usage rows follow).

    Read rule (design/hot-cold.md): rows of flushes with seq ≤ ``seq`` (the shard's seq
    when Redis was read) plus rolled-up rows (seq 0). Flushes drained after the Redis read
    have seq > ``seq`` and their units were counted from Redis, so they are left out.
    With ``by_hour=False`` the quantities are summed per resource type in PostgreSQL and
    labelled with ``start``: a month's bill reads a handful of rows, not one per hour.
    """
    async with translated():
        rows = await pool.fetch(
            _READ_COLD_BY_HOUR if by_hour else _READ_COLD_TOTALS,
            tenant,
            customer_id,
            start,
            end,
            shard,
            seq,
            pending_seq,
        )
    first = rows[0]
    buckets = {(r["resource_type"], r["bucket_start"]): r["quantity"] for r in rows[1:]}
    return ColdRead(
        buckets=buckets,
        pending_committed=first["pending_committed"],
        any_usage=first["any_usage"],
        customer_exists=first["customer_exists"],
        plan_id=first["plan_id"],
        plan_body=first["plan_body"],
    )
