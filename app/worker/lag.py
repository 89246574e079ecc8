"""How far behind the cold store is: measured from Redis, not from the flusher's word.

Flush lag is the age of the oldest usage not yet in PostgreSQL (the first undrained write
of a shard, or the oldest write of its pending flush); pending age is how long the oldest
drained flush has waited for its commit and ack. Both rise while no flusher runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from app.hotpath.keys import SHARDS, TenantKeys


@dataclass(frozen=True, slots=True)
class Lag:
    """Seconds; 0 when nothing waits."""

    flush_lag: float
    pending_age: float
    idempotency_keys: int


async def measure_lag(redis: aioredis.Redis, tenants: Sequence[str], ttl: int) -> Lag:
    """One pipelined round trip over every shard of ``tenants``."""
    now_ms = time.time() * 1000
    window = int(time.time()) // ttl
    async with redis.pipeline(transaction=False) as pipe:
        for tenant in tenants:
            keys = TenantKeys(tenant)
            for shard in range(SHARDS):
                pipe.get(keys.first(shard))
                pipe.hmget(keys.meta(shard), ["oldest_ms", "drained_ms"])
            pipe.get(keys.idempotency_count(window))
            pipe.get(keys.idempotency_count(window - 1))
        replies = await pipe.execute()
    oldest = now_ms
    drained = now_ms
    remembered = 0
    per_tenant = SHARDS * 2 + 2
    for t in range(len(tenants)):
        chunk = replies[t * per_tenant : (t + 1) * per_tenant]
        for shard in range(SHARDS):
            first, (pending_oldest, drained_ms) = chunk[2 * shard], chunk[2 * shard + 1]
            for value in (first, pending_oldest):
                if value is not None:
                    oldest = min(oldest, float(value))
            if drained_ms is not None:
                drained = min(drained, float(drained_ms))
        remembered += sum(int(v) for v in chunk[-2:] if v is not None)
    return Lag(
        flush_lag=max(0.0, (now_ms - oldest) / 1000),
        pending_age=max(0.0, (now_ms - drained) / 1000),
        idempotency_keys=remembered,
    )
