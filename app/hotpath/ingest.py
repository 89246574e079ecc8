"""Counting events in Redis: one ingest script call for many events of one tenant."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from app.hotpath.bound import month_of_hour
from app.hotpath.events import Event
from app.hotpath.keys import TenantKeys, idempotency_slot, meter_field, shard_of
from app.hotpath.redis_errors import redis_errors
from app.scripts import Scripts
from app.timestamps import hour_of

# Rounds of seeding hours (app/hotpath/bound.py) before an undecided event gets a 503: each
# round fails only if another event of the same customer and resource type was accepted
# during its exact read.
SEED_ROUNDS = 5


class Outcome(IntEnum):
    """What the ingest script decided for an event."""

    ACCEPTED = 1
    DUPLICATE = 2
    CONFLICT = 3
    OVERFLOW = 4


class Seeder(Protocol):
    """Seeds the hour total of an event the ingest script could not decide."""

    async def seed(self, tenant: str, event: Event) -> bool: ...


class BoundBusyError(Exception):
    """An event's hour could not be decided: its month kept moving while the hour's exact
    total was read (app/hotpath/bound.py). Nothing was counted; retrying is safe (503)."""


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
    # Idempotency windows: a key is written to the hash of the current window (length = TTL)
    # and looked up in the previous, current and next window; the hashes expire as a whole
    # one TTL after their window ends. So a key is remembered for at least TTL (at most 2×TTL),
    # and API servers whose clocks differ by less than a window still find each other's keys.
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
        hour = hour_of(event.timestamp_ns)
        month, month_expires = month_of_hour(hour)
        args += [
            ref(keys.hot(event.customer_id)),
            ref(keys.totals(event.customer_id, month)),
            ref(keys.dirty(shard)),
            ref(keys.first(shard)),
            event.customer_id,
            meter_field(event.resource_type, hour),
            event.micro,
            event.resource_type,
            month_expires,
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
    *,
    seeder: Seeder | None = None,
) -> list[Outcome]:
    """Run the ingest script for ``events`` (all of one tenant); one outcome per event.

    Atomic: either the script ran and every outcome holds, or it did not run at all
    (Redis down or out of memory → :class:`RedisUnavailableError`). When the script cannot
    decide an event's bound from Redis alone it writes nothing: the hours are seeded with
    ``seeder`` (app/hotpath/bound.py) and the call is made again, up to SEED_ROUNDS times
    (then :class:`BoundBusyError`, as without a seeder). A seed's own failure (PostgreSQL
    down) is raised as it is.
    """
    if not events:
        return []
    keys, args = build_call(tenant, events, config, time.time_ns() if now_ns is None else now_ns)
    for attempt in range(SEED_ROUNDS + 1):
        async with redis_errors():
            reply = await scripts.ingest(keys=keys, args=args)
        if int(reply[0]) != 0:
            return [Outcome(int(code)) for code in reply]
        if seeder is None:
            raise BoundBusyError("an event's hour total is unknown and cannot be read")
        if attempt == SEED_ROUNDS:
            break
        for event in _undecided(reply, events).values():
            await seeder.seed(tenant, event)
    raise BoundBusyError("an hour's total kept changing while it was read; try again")


class NeedsSeedError(Exception):
    """The event's hour must be seeded before it can be decided (:func:`apply_each`)."""


async def apply_each(
    scripts: Scripts, tenant: str, events: Sequence[Event], config: IdempotencyConfig
) -> list[Outcome | Exception]:
    """:func:`apply_events` for the events of independent requests (the coalescer's), which
    never waits for PostgreSQL: an event whose hour must be seeded first gets a
    :class:`NeedsSeedError` (its request then calls :func:`apply_events` alone, with a
    seeder, in its own time and database budget), and the others are counted at once.
    A Redis failure is still raised for all."""
    results: dict[int, Outcome | Exception] = {}
    active = list(range(len(events)))
    now = time.time_ns()
    while active:
        sent = [events[i] for i in active]
        keys, args = build_call(tenant, sent, config, now)
        async with redis_errors():
            reply = await scripts.ingest(keys=keys, args=args)
        if int(reply[0]) != 0:
            results.update(zip(active, (Outcome(int(code)) for code in reply), strict=True))
            break
        # Nothing was written. Every event of an undecided hour is set aside (the later
        # ones could not be decided either); the call is made again without them.
        stuck = _undecided(reply, sent)
        for i in active:
            if _bucket(events[i]) in stuck:
                results[i] = NeedsSeedError("the event's hour must be read first")
        active = [i for i in active if i not in results]
    return [results[i] for i in range(len(events))]


def _bucket(event: Event) -> tuple[str, str, int]:
    return (event.customer_id, event.resource_type, hour_of(event.timestamp_ns))


def _undecided(reply: list[bytes], events: Sequence[Event]) -> dict[tuple[str, str, int], Event]:
    """The hours an undecided reply ``{0, i, j, ...}`` names, each with its first event."""
    hours: dict[tuple[str, str, int], Event] = {}
    for position in reply[1:]:
        event = events[int(position) - 1]
        hours.setdefault(_bucket(event), event)
    return hours
