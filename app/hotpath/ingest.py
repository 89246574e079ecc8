"""Counting events in Redis: one ingest script call for many events of one tenant."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from app.hotpath.events import Event
from app.hotpath.keys import TenantKeys, idempotency_slot, meter_field, shard_of
from app.hotpath.redis_errors import redis_errors
from app.scripts import Scripts
from app.timestamps import hour_of

# Idempotency windows: a key is written to the hash of the current window (length = TTL)
# and looked up in the previous, current and next window; the hashes expire as a whole
# one TTL after their window ends. So a key is remembered for at least TTL (at most 2×TTL),
# and API servers whose clocks differ by less than a window still find each other's keys.
_ARGS_PER_EVENT = 13


class Outcome(IntEnum):
    """What the ingest script decided for an event."""

    ACCEPTED = 1
    DUPLICATE = 2
    CONFLICT = 3
    OVERFLOW = 4


@dataclass(frozen=True, slots=True)
class IdempotencyConfig:
    """How idempotency keys are remembered."""

    ttl: int
    fanout: int


def build_call(
    tenant: str, events: Sequence[Event], config: IdempotencyConfig, now_ns: int
) -> tuple[list[str], list[str | bytes | int]]:
    """KEYS and ARGV of one ingest call (see ``app/lua/ingest.lua``)."""
    keys = TenantKeys(tenant)
    index: dict[str, int] = {}

    def ref(name: str) -> int:
        found = index.get(name)
        if found is None:
            found = index[name] = len(index) + 1
        return found

    now_s = now_ns // 1_000_000_000
    window = now_s // config.ttl
    expire_at = (window + 1) * config.ttl + config.ttl + 60
    args: list[str | bytes | int] = [
        len(events),
        now_ns // 1_000_000,
        expire_at,
        ref(keys.idempotency_count(window)),
    ]
    for event in events:
        shard = shard_of(event.customer_id)
        args += [
            ref(keys.hot(event.customer_id)),
            ref(keys.pending(event.customer_id)),
            ref(keys.dirty(shard)),
            ref(keys.first(shard)),
            event.customer_id,
            meter_field(event.resource_type, hour_of(event.timestamp_ns)),
            event.micro,
        ]
        if event.idempotency_key is None:
            args += ["", "", 0, 0, 0, 0]
        else:
            slot = idempotency_slot(event.idempotency_key, config.fanout)
            args += [
                slot.field,
                event.fingerprint(),
                ref(keys.idempotency(window, slot.slot)),
                ref(keys.idempotency(window - 1, slot.slot)),
                ref(keys.idempotency(window, slot.slot)),
                ref(keys.idempotency(window + 1, slot.slot)),
            ]
    return list(index), args


async def apply_events(
    scripts: Scripts,
    tenant: str,
    events: Sequence[Event],
    config: IdempotencyConfig,
    now_ns: int | None = None,
) -> list[Outcome]:
    """Run the ingest script for ``events`` (all of one tenant); one outcome per event.

    Atomic: either the script ran and every outcome holds, or it did not run at all
    (Redis down or out of memory → :class:`RedisUnavailableError`).
    """
    if not events:
        return []
    keys, args = build_call(tenant, events, config, time.time_ns() if now_ns is None else now_ns)
    async with redis_errors():
        reply = await scripts.ingest(keys=keys, args=args)
    return [Outcome(int(code)) for code in reply]
