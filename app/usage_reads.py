"""Exact usage reads: hot + in-flight + flushed, each unit counted once, at any instant.

One atomic Redis read (the customer's hot and pending fields with the shard's seq
numbers), then one PostgreSQL statement filtered by those numbers. Redis first, then
PostgreSQL: whatever moves between the two reads moves from Redis to PostgreSQL with a
seq the PostgreSQL read excludes, or is the pending flush, which is counted from exactly
one side. Rolled-up rows (seq 0) carry no seq to exclude: a flush drained after the Redis
read must not be rolled up before the PostgreSQL read. TALLY_ROLLUP_AGE makes that rare;
the statement tells when it happened anyway, and the read is made again.
Cost: the customer's own fields and rows in the range. Concurrent bills share one Redis
call and one PostgreSQL statement (app/coalescer.py), each still exact on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import structlog

from app.hotpath.keys import TenantKeys, as_text, shard_of, split_field
from app.hotpath.redis_errors import redis_errors
from app.quantities import from_micro
from app.repo.deadline import start_clock
from app.repo.errors import DatabaseUnavailableError
from app.repo.usage import ColdKey, ColdRead, read_cold
from app.scripts import Scripts

log = structlog.get_logger("tally.reads")
# Reads made again at most this often when they raced a roll-up (each time needs a
# roll-up of a flush drained during the read: practically never twice).
READ_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class CustomerUsage:
    """A customer's exact usage per (resource type, hour) in a range, plus who they are."""

    buckets: dict[tuple[str, int], Decimal]
    exists: bool
    plan_id: str | None
    plan_body: str | None

    def per_resource(self) -> dict[str, Decimal]:
        """Total quantity per resource type over the range."""
        totals: dict[str, Decimal] = defaultdict(Decimal)
        for (resource_type, _), quantity in self.buckets.items():
            totals[resource_type] += quantity
        return dict(totals)


@dataclass(frozen=True, slots=True)
class Unflushed:
    """A customer's fields still in Redis (micro-units), with the shard's seq numbers that
    tell the PostgreSQL read which flushes to count."""

    hot: dict[str, int]
    pending: dict[str, int]
    pending_seq: int
    seq: int


def _pairs(flat: list[bytes]) -> dict[str, int]:
    return {as_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


async def read_unflushed(
    scripts: Scripts, tenant: str, customers: Sequence[str]
) -> list[Unflushed]:
    """One atomic Redis read of the customers' hot and pending fields (app/lua/read.lua)."""
    keys = TenantKeys(tenant)
    names: list[str] = []
    for customer_id in customers:
        shard = shard_of(customer_id)
        names += [
            keys.hot(customer_id),
            keys.pending(customer_id),
            keys.meta(shard),
            keys.seq(shard),
        ]
    async with redis_errors():
        replies = await scripts.read(keys=names)
    return [
        Unflushed(_pairs(hot), _pairs(pending), int(pending_seq), int(seq))
        for hot, pending, pending_seq, seq in replies
    ]


async def read_customer_usage(
    scripts: Scripts,
    pool: asyncpg.Pool,
    tenant: str,
    customer_id: str,
    first_hour: int,
    end_hour: int,
    *,
    monthly: bool = False,
) -> CustomerUsage:
    """Usage of hours ``[first_hour, end_hour)`` (hours since the epoch).

    With ``monthly=True`` (bills; the hours must be a UTC calendar month) flushed usage
    comes summed per resource type, labelled with ``first_hour``: only
    :meth:`CustomerUsage.per_resource` is meaningful then.
    """
    (usage,) = await read_usages(
        scripts, pool, tenant, [customer_id], first_hour, end_hour, monthly=monthly
    )
    if isinstance(usage, Exception):
        raise usage
    return usage


async def read_usages(
    scripts: Scripts,
    pool: asyncpg.Pool,
    tenant: str,
    customers: Sequence[str],
    first_hour: int,
    end_hour: int,
    *,
    monthly: bool = False,
) -> list[CustomerUsage | DatabaseUnavailableError]:
    """:func:`read_customer_usage` for several customers, one per customer in order (or
    the error of that customer alone: its reads kept racing roll-ups).

    One Redis call reads them all, then one PostgreSQL statement (concurrent bills share
    both: app/coalescer.py).
    Each customer's usage is exact at an instant within this call, as if read alone.
    """
    start = datetime.fromtimestamp(first_hour * 3600, tz=UTC)
    end = datetime.fromtimestamp(end_hour * 3600, tz=UTC)
    done: dict[str, CustomerUsage | DatabaseUnavailableError] = {}
    # Each customer once, however many of its bills share the read (a dashboard's
    # polling): its fields and rows are read once and its usage given to each.
    todo = list(dict.fromkeys(customers))
    for _ in range(READ_ATTEMPTS):
        # Start the request's PostgreSQL budget before the Redis read: the PostgreSQL
        # snapshot then follows the Redis one by at most the budget, however the event
        # loop is delayed in between (TALLY_ROLLUP_AGE's floor rests on that).
        start_clock()
        unflushed = await read_unflushed(scripts, tenant, todo)
        keys = [
            ColdKey(customer_id, shard_of(customer_id), u.seq, u.pending_seq)
            for customer_id, u in zip(todo, unflushed, strict=True)
        ]
        colds = await read_cold(pool, tenant, start, end, keys, monthly=monthly)
        raced: list[str] = []
        for customer_id, u, cold in zip(todo, unflushed, colds, strict=True):
            if cold.raced_rollup:
                raced.append(customer_id)
                log.warning("read.raced_rollup", tenant=tenant, customer=customer_id, seq=u.seq)
            else:
                done[customer_id] = _merge(u, cold, first_hour, end_hour)
        if not raced:
            break
        todo = raced
    else:
        for customer_id in todo:
            done[customer_id] = DatabaseUnavailableError("the read kept racing roll-ups; try again")
    return [done[customer_id] for customer_id in customers]


def _merge(unflushed: Unflushed, cold: ColdRead, first_hour: int, end_hour: int) -> CustomerUsage:
    """Hot + pending (unless its flush is already committed) + flushed, per bucket."""
    micro: dict[tuple[str, int], int] = defaultdict(int)
    hot, pending = unflushed.hot, unflushed.pending
    sources = [hot] if cold.pending_committed else [hot, pending]
    for fields in sources:
        for field, value in fields.items():
            resource_type, hour = split_field(field)
            if first_hour <= hour < end_hour:
                micro[(resource_type, hour)] += value
    buckets: dict[tuple[str, int], Decimal] = {
        key: from_micro(value) for key, value in micro.items()
    }
    for (resource_type, start), quantity in cold.buckets.items():
        key = (resource_type, int(start.timestamp()) // 3600)
        buckets[key] = buckets.get(key, Decimal(0)) + quantity
    exists = cold.customer_exists or cold.any_usage or bool(hot) or bool(pending)
    return CustomerUsage(
        buckets={k: v for k, v in buckets.items() if v},
        exists=exists,
        plan_id=cold.plan_id,
        plan_body=cold.plan_body,
    )
