"""The cold store: committing flushes exactly once, reading a customer's flushed usage,
and rolling old flush rows up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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


# The slowest rate, in rows per second, at which a write of many rows is still waited for:
# a statement writing n rows gets its base time-out plus n / WRITE_ROWS_PER_SECOND seconds.
# A fixed time-out would fail a large flush (one that piled up while PostgreSQL was down)
# on every retry, for ever; a frozen server is still noticed, later for larger writes.
WRITE_ROWS_PER_SECOND = 5_000


def write_timeout(base: float, rows: int) -> float:
    """The time-out of a statement writing ``rows`` rows (see WRITE_ROWS_PER_SECOND)."""
    return base + rows / WRITE_ROWS_PER_SECOND


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
    *,
    statement_timeout: float,
) -> CommitOutcome:
    """Write a drained flush in one transaction, once.

    The flush row's primary key (tenant, shard, seq) is the idempotency: if it exists with
    the same flush id, an earlier attempt committed (a crash before the ack) and nothing is
    written again. The same seq with another flush id, or a higher seq already committed,
    means Redis went back in time: :class:`SequenceAnomalyError`. ``statement_timeout``
    is the time-out of its statements; the row copy gets more per row (:func:`write_timeout`).
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
                timeout=write_timeout(statement_timeout, len(rows)),
            )
        await checkpoint("after_insert")
    return CommitOutcome.COMMITTED


# The roll-ups' advisory lock; migration 0004 takes it too.
ROLLUP_LOCK = 0x7A11_0002

_ROLLUP_PICK = """
    SELECT tenant, shard, seq, fields FROM (
        SELECT tenant, shard, seq, fields,
               sum(fields) OVER (ORDER BY committed_at, tenant, shard, seq) AS running
        FROM (
            SELECT tenant, shard, seq, fields, committed_at FROM flushes
            WHERE NOT rolled_up AND committed_at < now() - make_interval(secs => $1)
            ORDER BY committed_at
            LIMIT $2
        ) AS oldest
    ) AS counted
    WHERE running - fields < $3
"""

_ROLLUP_FOLD = """
    WITH marked AS (
        UPDATE flushes f SET rolled_up = true
        FROM unnest($1::text[], $2::smallint[], $3::bigint[]) AS p (tenant, shard, seq)
        WHERE f.tenant = p.tenant AND f.shard = p.shard AND f.seq = p.seq AND NOT f.rolled_up
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
    ), monthly AS (
        INSERT INTO usage_monthly (tenant, customer_id, month, resource_type, quantity)
        SELECT tenant, customer_id, date_trunc('month', bucket_start, 'UTC'),
               resource_type, sum(quantity)
        FROM moved
        GROUP BY 1, 2, 3, 4
        ON CONFLICT (tenant, customer_id, month, resource_type)
        DO UPDATE SET quantity = usage_monthly.quantity + EXCLUDED.quantity
        RETURNING 1
    )
    SELECT count(*) FROM marked
"""


async def rollup(
    pool: asyncpg.Pool,
    older_than: float,
    limit: int = 500,
    *,
    max_rows: int = 20_000,
    statement_timeout: float,
) -> int:
    """Fold the rows of flushes committed more than ``older_than`` seconds ago into one row
    per (tenant, customer, resource type, hour) with seq 0, and add them to the monthly
    totals (``usage_monthly``) bills read; returns flushes folded.

    The oldest flushes first, at most ``limit`` of them and about ``max_rows`` rows (always
    at least one flush), so one call stays short; call again while it returns > 0.

    One data-changing statement: a reader sees the rows either before or after.
    Rolled-up rows are always counted by reads; the age keeps a read that saw a flush's
    seq as "not yet flushed" (a few ms earlier) from seeing its rows as seq 0, and a read
    that does anyway knows it (:attr:`ColdRead.raced_rollup`) and reads again.
    ``statement_timeout`` is the time-out of its statements, plus :func:`write_timeout`'s
    share for the rows moved.
    """
    async with translated(), pool.acquire() as conn, conn.transaction():
        # One roll-up at a time: the picked flushes cannot be folded by another meanwhile.
        # The setting tells migration 0004's trigger this roll-up keeps usage_monthly.
        locked = await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock($1)"
            " AND set_config('tally.rollup_keeps_monthly', 'on', true) = 'on'",
            ROLLUP_LOCK,
        )
        if not locked:
            return 0
        picked = await conn.fetch(_ROLLUP_PICK, float(older_than), limit, max_rows)
        if not picked:
            return 0
        folded = await conn.fetchval(
            _ROLLUP_FOLD,
            [r["tenant"] for r in picked],
            [r["shard"] for r in picked],
            [r["seq"] for r in picked],
            timeout=write_timeout(statement_timeout, 2 * sum(r["fields"] for r in picked)),
        )
    return int(folded or 0)


@dataclass(frozen=True, slots=True)
class ColdRead:
    """A customer's flushed usage in a range, and what the read rule needs to know."""

    buckets: dict[tuple[str, datetime], Decimal]
    pending_committed: bool
    # A flush drained after the Redis read (seq > the read's seq) is already rolled up in
    # this snapshot: its units were counted from Redis and are in the rolled-up rows too.
    # The read must be made again (TALLY_ROLLUP_AGE makes this rare, not impossible).
    raced_rollup: bool
    any_usage: bool
    customer_exists: bool
    plan_id: str | None
    plan_body: str | None


# One statement reads the flushed usage of one customer or of many (concurrent bills share
# it: app/coalescer.py): a statement costs PostgreSQL ~0.1 ms however little it reads. $2
# holds the customers, with their shards $3, seqs $4 and pending seqs $5 (the read rule's
# inputs from their Redis reads); the range is [$6, $7). Per customer: a head row (whether
# its pending flush is committed, whether a flush drained after its Redis read is already
# rolled up, whether it has any usage, its record and plan), then its usage rows.
#
# Each probe of the head row is a LATERAL subquery with a LIMIT, which PostgreSQL cannot
# flatten into a join: each stays an index lookup by (tenant, customer) or (tenant, shard,
# seq), never a scan of the tenant's rows, whatever the statistics were when the
# connection planned the statement. The usage rows are a LATERAL subquery per customer too
# (without a LIMIT: checked with EXPLAIN on bench/bill.py's data, an index scan per
# customer on each arm). The ORDER BY of the two usage probes is their index's order:
# without it, the plan could take the first row of the tenant's flush index that matches
# the customer (3,120 rows read per bill in bench/bill.py's data, 0.9 ms of PostgreSQL
# instead of 0.1 ms). The arrays are read through sub-selects so that the planner cannot
# see their lengths: it then plans the statement once per connection and keeps that plan.
# Given the arrays themselves, it made a new plan for every execution (cheaper, it judged,
# for that length), which cost PostgreSQL 0.5 ms per bill instead of 0.13 ms.
_READ_COLD = """
    WITH req AS (
        SELECT * FROM unnest(
            (SELECT $2::text[]), (SELECT $3::int[]), (SELECT $4::bigint[]), (SELECT $5::bigint[])
        ) WITH ORDINALITY AS r(customer_id, shard, seq, pending_seq, i)
    )
    SELECT
        r.i,
        pc.hit IS NOT NULL AS pending_committed,
        rc.hit IS NOT NULL AS raced,
        (rolled.hit IS NOT NULL OR unrolled.hit IS NOT NULL) AS any_usage,
        cp.customer_id IS NOT NULL AS customer_exists,
        cp.plan_id,
        cp.plan_body,
        NULL::text AS resource_type,
        NULL::timestamptz AS bucket_start,
        NULL::numeric AS quantity
    FROM req r
    LEFT JOIN LATERAL (
        SELECT true AS hit FROM flushes
        WHERE tenant = $1 AND shard = r.shard AND seq = r.pending_seq LIMIT 1
    ) pc ON true
    LEFT JOIN LATERAL (
        SELECT true AS hit FROM flushes
        WHERE tenant = $1 AND shard = r.shard AND seq > r.seq AND rolled_up LIMIT 1
    ) rc ON true
    LEFT JOIN LATERAL (
        SELECT true AS hit FROM usage_records
        WHERE tenant = $1 AND customer_id = r.customer_id AND seq = 0
        ORDER BY bucket_start LIMIT 1
    ) rolled ON true
    LEFT JOIN LATERAL (
        SELECT true AS hit FROM usage_records
        WHERE tenant = $1 AND customer_id = r.customer_id AND seq > 0
        ORDER BY bucket_start LIMIT 1
    ) unrolled ON true
    LEFT JOIN LATERAL (
        SELECT c.customer_id, c.plan_id, p.body::text AS plan_body
        FROM customers c
        LEFT JOIN LATERAL (
            SELECT body FROM plans WHERE tenant = $1 AND plan_id = c.plan_id LIMIT 1
        ) p ON true
        WHERE c.tenant = $1 AND c.customer_id = r.customer_id LIMIT 1
    ) cp ON true
    UNION ALL
    SELECT
        r.i, NULL, NULL, NULL, NULL, NULL, NULL,
        parts.resource_type, {bucket_start}, sum(parts.quantity)
    FROM req r
    CROSS JOIN LATERAL ({parts}) AS parts
    GROUP BY r.i, parts.resource_type{group_by}
"""
# Usage series: one row per (resource type, hour), from the two halves of the customer
# index (rolled-up rows, and the flushes not rolled up yet: sql/0004).
_READ_COLD_BY_HOUR = _READ_COLD.format(
    bucket_start="parts.bucket_start",
    group_by=", parts.bucket_start",
    parts="""
        SELECT resource_type, bucket_start, quantity FROM usage_records
        WHERE tenant = $1 AND customer_id = r.customer_id
          AND bucket_start >= $6 AND bucket_start < $7
          AND seq = 0
        UNION ALL
        SELECT resource_type, bucket_start, quantity FROM usage_records
        WHERE tenant = $1 AND customer_id = r.customer_id
          AND bucket_start >= $6 AND bucket_start < $7
          AND seq > 0 AND shard = r.shard AND seq <= r.seq""",
)
# Bills: one row per resource type for the calendar month [$6, $7), labelled $6. The
# rolled-up part comes from usage_monthly (one row per resource type), the flushes not
# rolled up yet from their own partial index, so the cost does not grow with the hours of
# the month.
_READ_COLD_MONTH = _READ_COLD.format(
    bucket_start="$6::timestamptz",
    group_by="",
    parts="""
        SELECT resource_type, quantity FROM usage_monthly
        WHERE tenant = $1 AND customer_id = r.customer_id AND month = $6
        UNION ALL
        SELECT resource_type, quantity FROM usage_records
        WHERE tenant = $1 AND customer_id = r.customer_id
          AND bucket_start >= $6 AND bucket_start < $7
          AND seq > 0 AND shard = r.shard AND seq <= r.seq""",
)


class ColdKey(NamedTuple):
    """Whose flushed usage to read, and the read rule's inputs from its Redis read."""

    customer_id: str
    shard: int
    seq: int
    pending_seq: int


def _is_calendar_month(start: datetime, end: datetime) -> bool:
    first = start.astimezone(UTC)
    following = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return first == first.replace(day=1, hour=0, minute=0, second=0, microsecond=0) and (
        end == following
    )


async def read_cold(
    pool: asyncpg.Pool,
    tenant: str,
    start: datetime,
    end: datetime,
    keys: Sequence[ColdKey],
    *,
    monthly: bool = False,
) -> list[ColdRead]:
    """One statement: for each key in order, the customer's flushed rows in ``[start, end)``
    visible under the read rule, whether its pending flush is already committed, and its
    record and plan.

    Read rule (design/hot-cold.md): rows of flushes with seq ≤ ``key.seq`` (the shard's
    seq when Redis was read) plus rolled-up rows (seq 0). Flushes drained after the Redis
    read have seq > ``key.seq`` and their units were counted from Redis, so they are left
    out. With ``monthly=True`` the range must be a UTC calendar month; the quantities come
    summed per resource type and labelled with ``start`` (what a bill needs), read from the
    monthly totals plus the flushes not rolled up yet: a handful of rows, not one per hour.
    """
    if monthly and not _is_calendar_month(start, end):
        raise ValueError(f"a monthly read needs a calendar month, got [{start}, {end})")
    async with translated():
        rows = await pool.fetch(
            _READ_COLD_MONTH if monthly else _READ_COLD_BY_HOUR,
            tenant,
            [k.customer_id for k in keys],
            [k.shard for k in keys],
            [k.seq for k in keys],
            [k.pending_seq for k in keys],
            start,
            end,
        )
    heads = {r["i"]: r for r in rows if r["resource_type"] is None}
    buckets: dict[int, dict[tuple[str, datetime], Decimal]] = {i: {} for i in heads}
    for r in rows:
        if r["resource_type"] is not None:
            buckets[r["i"]][(r["resource_type"], r["bucket_start"])] = r["quantity"]
    return [
        ColdRead(
            buckets=buckets[i],
            pending_committed=heads[i]["pending_committed"],
            raced_rollup=heads[i]["raced"],
            any_usage=heads[i]["any_usage"],
            customer_exists=heads[i]["customer_exists"],
            plan_id=heads[i]["plan_id"],
            plan_body=heads[i]["plan_body"],
        )
        for i in range(1, len(keys) + 1)
    ]
