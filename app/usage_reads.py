"""Exact usage reads: hot + in-flight + flushed, each unit counted once, at any instant.

One atomic Redis read (the customer's hot and pending fields with the shard's seq
numbers), then one PostgreSQL statement filtered by those numbers. Redis first, then
PostgreSQL: whatever moves between the two reads moves from Redis to PostgreSQL with a
seq the PostgreSQL read excludes, or is the pending flush, which is counted from exactly
one side. Rolled-up rows (seq 0) carry no seq to exclude: a flush drained after the Redis
read must not be rolled up before the PostgreSQL read. TALLY_ROLLUP_AGE makes that rare;
the statement tells when it happened anyway, and the read is made again.
Cost: the customer's own fields and rows in the range.
"""

from __future__ import annotations

from collections import defaultdict
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
from app.repo.usage import read_cold
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


def _pairs(flat: list[bytes]) -> dict[str, int]:
    return {as_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


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
    keys = TenantKeys(tenant)
    shard = shard_of(customer_id)
    for _ in range(READ_ATTEMPTS):
        # Start the request's PostgreSQL budget before the Redis read: the PostgreSQL
        # snapshot then follows the Redis one by at most the budget, however the event
        # loop is delayed in between (TALLY_ROLLUP_AGE's floor rests on that).
        start_clock()
        async with redis_errors():
            hot_flat, pending_flat, pending_seq, seq = await scripts.read(
                keys=[
                    keys.hot(customer_id),
                    keys.pending(customer_id),
                    keys.meta(shard),
                    keys.seq(shard),
                ],
            )
        cold = await read_cold(
            pool,
            tenant,
            customer_id,
            shard,
            datetime.fromtimestamp(first_hour * 3600, tz=UTC),
            datetime.fromtimestamp(end_hour * 3600, tz=UTC),
            int(seq),
            int(pending_seq),
            monthly=monthly,
        )
        if not cold.raced_rollup:
            break
        log.warning("read.raced_rollup", tenant=tenant, shard=shard, seq=int(seq))
    else:
        raise DatabaseUnavailableError("the read kept racing roll-ups; try again")
    hot, pending = _pairs(hot_flat), _pairs(pending_flat)
    micro: dict[tuple[str, int], int] = defaultdict(int)
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
