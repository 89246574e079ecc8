"""The per-hour bound (10¹² units per customer, resource type and hour), flushed or not.

Redis forgets an hour's units once they are flushed, so the bound cannot be checked
against the hot and pending meters. The ingest script checks it against totals that only
grow: each customer's month-total hash holds every unit accepted in the month per resource
type, and an hour holds at most its month. Only when the month itself would pass the bound
does the hour need its own total. That total is "seeded" here, once per hour, from an exact
read of the hour (hot + pending + flushed in PostgreSQL); from then on the ingest script
keeps it. A seed is written only if no event entered the hour between the read and the
write (``app/lua/seed.lua`` says how that is known), so the read is still the hour's total.

Cost: a month-total field per (customer, resource type, month); in the ingest script one
HMGET per (customer, resource type, hour) and one HSET per (customer, resource type, month)
of a call (an EXPIREAT only when the field is new, an HINCRBY per seeded hour). A
PostgreSQL read only for a customer past 10¹² − 10⁹ units of one resource type in a month:
once per hour it uses after that, per API process (concurrent requests for one hour share
the read), and again if a seed is refused.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from app.hotpath.events import Event
from app.hotpath.keys import TenantKeys, as_text, meter_field, shard_of
from app.hotpath.redis_errors import redis_errors
from app.quantities import as_micro
from app.scripts import Scripts
from app.timestamps import hour_of
from app.usage_reads import read_customer_usage

# A month's totals are kept until this long after the month ends: events are accepted up
# to 35 days in the past, and a day more covers clocks that differ.
KEEP_AFTER_MONTH_S = 36 * 86_400


@functools.lru_cache(maxsize=4096)
def month_of_hour(hour: int) -> tuple[int, int]:
    """(months since 1970-01, unix second at which that month's totals expire)."""
    start = datetime.fromtimestamp(hour * 3600, tz=UTC)
    month = (start.year - 1970) * 12 + start.month - 1
    following = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=UTC)
    return month, int(following.timestamp()) + KEEP_AFTER_MONTH_S


class HourSeeder:
    """Seeds the hours the ingest script could not decide (see the module text)."""

    def __init__(self, redis: aioredis.Redis, scripts: Scripts, pool: asyncpg.Pool) -> None:
        self.redis = redis
        self.scripts = scripts
        self.pool = pool
        # Seeds in progress in this process, by (tenant, customer, resource type, hour):
        # concurrent requests for one new hour (a busy customer at an hour's start) share one
        # PostgreSQL read instead of each taking a pool connection.
        self._running: dict[tuple[str, str, str, int], asyncio.Task[bool]] = {}

    async def seed(self, tenant: str, event: Event) -> bool:
        """Seed the hour of ``event``; False when an event may have entered the hour during
        the exact read (try again)."""
        key = (tenant, event.customer_id, event.resource_type, hour_of(event.timestamp_ns))
        task = self._running.get(key)
        if task is None:
            # A task of its own (with the first caller's database budget): a caller that is
            # cancelled does not cancel the read the others wait for.
            task = asyncio.create_task(self._seed(tenant, event))
            self._running[key] = task

            def done(finished: asyncio.Task[bool]) -> None:
                self._running.pop(key, None)
                if not finished.cancelled():
                    finished.exception()  # retrieved, even if every caller has gone

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _seed(self, tenant: str, event: Event) -> bool:
        keys = TenantKeys(tenant)
        customer = event.customer_id
        hour = hour_of(event.timestamp_ns)
        month, expire_at = month_of_hour(hour)
        field = meter_field(event.resource_type, hour)
        seq_key = keys.seq(shard_of(customer))
        # The guard first, then the exact read: seed.lua stores the total only if neither
        # moved since, so nothing reached the hour after the read either.
        async with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(keys.hot(customer), field)
            pipe.get(seq_key)
            hot, seq = await pipe.execute()
        usage = await read_customer_usage(self.scripts, self.pool, tenant, customer, hour, hour + 1)
        exact = as_micro(usage.buckets.get((event.resource_type, hour), Decimal(0)))
        async with redis_errors():
            seeded = await self.scripts.seed(
                keys=[keys.totals(customer, month), keys.hot(customer), seq_key],
                args=[
                    field,
                    exact,
                    "" if hot is None else as_text(hot),
                    "" if seq is None else as_text(seq),
                    expire_at,
                ],
            )
        return bool(int(seeded))
