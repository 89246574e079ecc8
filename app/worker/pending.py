"""Reading a drained (pending) flush out of Redis."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import redis.asyncio as aioredis

from app.hotpath.keys import TenantKeys, as_text
from app.repo.usage import UsageRow
from app.timestamps import hour_start

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Drained:
    """The pending flush of a shard, as the drain script described it."""

    seq: int
    flush_id: str
    fields: int
    drained_at: datetime
    oldest_ms: int
    resumed: bool

    @classmethod
    def from_reply(cls, reply: list[bytes]) -> Drained | None:
        """Parse the drain script's reply (``None`` when the shard had nothing)."""
        if not reply:
            return None
        seq, flush_id, fields, drained_ms, oldest_ms, resumed = reply
        return cls(
            seq=int(seq),
            flush_id=flush_id.decode(),
            fields=int(fields),
            drained_at=datetime.fromtimestamp(int(drained_ms) / 1000, tz=UTC),
            oldest_ms=int(oldest_ms),
            resumed=int(resumed) == 1,
        )


async def read_pending(
    redis: aioredis.Redis, keys: TenantKeys, shard: int
) -> tuple[list[UsageRow], int]:
    """Every (customer, resource type, hour) quantity of the shard's pending flush.

    The pending data is frozen (ingest only reads it), so reading it in several round
    trips is safe; the caller checks the field count (returned with the rows, zero
    fields included) against the drain's record. This runs once per field of every flush,
    so hour starts are built once per hour and rows are plain tuples.
    """
    customers = sorted(as_text(c) for c in await redis.smembers(keys.pending_customers(shard)))
    rows: list[UsageRow] = []
    fields_seen = 0
    hours: dict[bytes, datetime] = {}
    for start in range(0, len(customers), _CHUNK):
        chunk = customers[start : start + _CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for customer in chunk:
                pipe.hgetall(keys.pending(customer))
            replies = await pipe.execute()
        for customer, fields in zip(chunk, replies, strict=True):
            fields_seen += len(fields)
            for field, value in fields.items():
                resource_type, _, hour = field.rpartition(b"|")
                micro = int(value)
                if not micro:
                    continue
                bucket = hours.get(hour)
                if bucket is None:
                    bucket = hours[hour] = hour_start(int(hour))
                rows.append(
                    UsageRow(customer, resource_type.decode(), bucket, Decimal(micro).scaleb(-6))
                )
    return rows, fields_seen


async def count_pending_fields(redis: aioredis.Redis, keys: TenantKeys, shard: int) -> int:
    """How many fields the shard's pending flush holds now (for the consistency check)."""
    customers = [as_text(c) for c in await redis.smembers(keys.pending_customers(shard))]
    total = 0
    for start in range(0, len(customers), _CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for customer in customers[start : start + _CHUNK]:
                pipe.hlen(keys.pending(customer))
            total += sum(await pipe.execute())
    return total
