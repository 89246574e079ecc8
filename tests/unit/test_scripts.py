"""The Lua scripts (ingest, drain, ack, read) as their header comments promise them.

Every test runs twice (STYLE habit 10): on fakeredis (Lua 5.1 through lupa, scripts
registered without their ``#!lua`` flags line) and on the session's real Redis. Both
interpreters are Lua 5.1, whose numbers are doubles: the big-number cases below would
come out wrong in either if the script did its arithmetic on plain Lua numbers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app.hotpath.bound import month_of_hour
from app.hotpath.events import Event, parse_event
from app.hotpath.ingest import (
    SEED_ROUNDS,
    BoundBusyError,
    IdempotencyConfig,
    NeedsSeedError,
    Outcome,
    apply_each,
    apply_events,
    build_call,
)
from app.hotpath.keys import TenantKeys, as_text, idempotency_slot, meter_field, shard_of
from app.quantities import MAX_EVENT_MICRO, MAX_HOUR_MICRO, from_micro
from app.repo.errors import DatabaseUnavailableError
from app.scripts import Scripts
from app.timestamps import NS, hour_of
from app.usage_reads import Unflushed, read_unflushed
from tests.redis_state import snapshot

pytestmark = pytest.mark.unit

TENANT = "acme:eu-1"  # a ':' in the tenant, as the contract allows
KEYS = TenantKeys(TENANT)
CONFIG = IdempotencyConfig(ttl=86_400, fanout=16)
LIMIT = MAX_HOUR_MICRO  # 10^12 units = 10^18 micro-units
MAX_EVENT = "999999999.999999"  # the largest quantity an event can have but 10^9 itself

# The previous hour: always inside the accepted timestamp window, and fixed for the run, so
# events made a few seconds apart never land in two different hours.
HOUR = hour_of(time.time_ns()) - 1
TS = datetime.fromtimestamp(HOUR * 3600 + 90, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

C1 = "c:1"
C2 = next(f"c:{n}" for n in range(2, 1000) if shard_of(f"c:{n}") == shard_of(C1))
C3 = next(f"c:{n}" for n in range(2, 1000) if shard_of(f"c:{n}") != shard_of(C1))
SHARD = shard_of(C1)
API = meter_field("api_call", HOUR)
GB = meter_field("gb", HOUR)


def ev(
    quantity: object = "1",
    *,
    customer: str = C1,
    resource: str = "api_call",
    key: str | None = None,
    timestamp: str | None = TS,
) -> Event:
    """An event parsed the way the API parses it."""
    body: dict[str, object] = {
        "customer_id": customer,
        "resource_type": resource,
        "quantity": quantity,
    }
    if timestamp is not None:
        body["timestamp"] = timestamp
    if key is not None:
        body["idempotency_key"] = key
    return parse_event(body)


def pairs(flat: Iterable[bytes | str]) -> dict[str, int]:
    items = list(flat)
    return {as_text(items[i]): int(items[i + 1]) for i in range(0, len(items), 2)}


@dataclass
class Backend:
    """A client with the scripts registered, and the calls the app makes with them.

    ``flushed`` plays PostgreSQL: :meth:`ack` moves the acked flush's units there, and
    :meth:`seed` reads an hour's exact total from Redis and it, as
    :class:`app.hotpath.bound.HourSeeder` does from Redis and PostgreSQL (tested against
    real ones in tests/integration/test_bound.py).
    """

    client: aioredis.Redis
    scripts: Scripts
    flushed: dict[tuple[str, str], int] = field(default_factory=dict)
    seeds: int = 0

    async def ingest(
        self, *events: Event, now_ns: int | None = None, seeder: bool = True
    ) -> list[Outcome]:
        return await apply_events(
            self.scripts, TENANT, events, CONFIG, now_ns, seeder=self if seeder else None
        )

    async def fill(self, micro: int, customer: str = C1, resource: str = "api_call") -> None:
        """Accept events (the largest there are) adding up to ``micro`` in the hour."""
        sizes = [MAX_EVENT_MICRO] * (micro // MAX_EVENT_MICRO)
        if micro % MAX_EVENT_MICRO:
            sizes.append(micro % MAX_EVENT_MICRO)
        events = [ev(from_micro(size), customer=customer, resource=resource) for size in sizes]
        assert await self.ingest(*events) == [Outcome.ACCEPTED] * len(events)

    async def seed(self, tenant: str, event: Event) -> bool:
        hot, seq = await self.guard(event)
        await self.between(event)
        return await self.store(event, hot, seq)

    async def guard(self, event: Event) -> tuple[str, str]:
        """The hour's hot field and the shard's seq, before the exact read."""
        meter = meter_field(event.resource_type, hour_of(event.timestamp_ns))
        hot = await self.client.hget(KEYS.hot(event.customer_id), meter)
        seq = await self.client.get(KEYS.seq(shard_of(event.customer_id)))
        return as_text(hot or b""), as_text(seq or b"")

    async def between(self, event: Event) -> None:
        """What happens between the guard read and the seed (nothing, here)."""

    async def store(self, event: Event, hot_before: str, seq_before: str) -> bool:
        """The exact read (Redis + ``flushed``), then seed.lua."""
        hour = hour_of(event.timestamp_ns)
        month, expire_at = month_of_hour(hour)
        meter = meter_field(event.resource_type, hour)
        hot, pending, _, _ = await self.read(event.customer_id)
        exact = hot.get(meter, 0) + pending.get(meter, 0)
        exact += self.flushed.get((event.customer_id, meter), 0)
        self.seeds += 1
        seeded = await self.scripts.seed(
            keys=[
                KEYS.totals(event.customer_id, month),
                KEYS.hot(event.customer_id),
                KEYS.seq(shard_of(event.customer_id)),
            ],
            args=[meter, exact, hot_before, seq_before, expire_at],
        )
        return bool(seeded)

    async def month_total(self, customer: str = C1, resource: str = "api_call") -> int | None:
        value = await self.client.hget(KEYS.totals(customer, month_of_hour(HOUR)[0]), resource)
        return None if value is None else int(value)

    async def hour_total(self, customer: str = C1, meter: str = API) -> int | None:
        value = await self.client.hget(KEYS.totals(customer, month_of_hour(HOUR)[0]), meter)
        return None if value is None else int(value)

    async def hot(self, customer: str = C1, field: str = API) -> int | None:
        value = await self.client.hget(KEYS.hot(customer), field)
        return None if value is None else int(value)

    async def pending(self, customer: str = C1) -> dict[str, int]:
        stored = await self.client.hgetall(KEYS.pending(customer))
        return {as_text(k): int(v) for k, v in stored.items()}

    async def drain(self, flush_id: str, now_ms: int = 1_700_000_000_000) -> list[Any]:
        # KEYS/ARGV exactly as app/worker/flusher.py builds them.
        reply = await self.scripts.drain(
            keys=[
                KEYS.dirty(SHARD),
                KEYS.pending_customers(SHARD),
                KEYS.meta(SHARD),
                KEYS.seq(SHARD),
                KEYS.first(SHARD),
            ],
            args=[KEYS.hot_prefix, KEYS.pending_prefix, flush_id, now_ms],
        )
        return list(reply)

    async def ack(self, flush_id: str) -> int:
        if as_text(await self.client.hget(KEYS.meta(SHARD), "flush_id") or b"") == flush_id:
            for customer in await self.members(KEYS.pending_customers(SHARD)):
                for meter, micro in (await self.pending(customer)).items():
                    key = (customer, meter)
                    self.flushed[key] = self.flushed.get(key, 0) + micro
        reply = await self.scripts.ack(
            keys=[KEYS.pending_customers(SHARD), KEYS.meta(SHARD)],
            args=[KEYS.pending_prefix, flush_id],
        )
        return int(reply)

    async def read(self, customer: str = C1) -> tuple[dict[str, int], dict[str, int], int, int]:
        # The script called exactly as bills and usage reads call it.
        (read,) = await read_unflushed(self.scripts, TENANT, [customer])
        return read.hot, read.pending, read.pending_seq, read.seq

    async def members(self, key: str) -> set[str]:
        return {as_text(m) for m in await self.client.smembers(key)}

    async def exists(self, *keys: str) -> int:
        return int(await self.client.exists(*keys))


@pytest.fixture(
    params=["fake", pytest.param("real", marks=pytest.mark.integration)],
)
def redis_target(request: pytest.FixtureRequest) -> str | None:
    """None for fakeredis, else the URL of the session's real Redis."""
    if request.param == "fake":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def backend(redis_target: str | None) -> AsyncIterator[Backend]:
    if redis_target is None:
        client: aioredis.Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        scripts = Scripts.register(client, shebang=False)
    else:
        client = aioredis.Redis.from_url(redis_target)
        scripts = Scripts.register(client)
    await client.flushall()
    yield Backend(client, scripts)
    await client.aclose()


# -- ingest: the four codes ----------------------------------------------------------------


async def test_accepted_counts_in_hot_marks_dirty_and_first_write(backend: Backend) -> None:
    now_ns = time.time_ns()
    assert await backend.ingest(ev("2.5"), now_ns=now_ns) == [Outcome.ACCEPTED]
    assert await backend.hot() == 2_500_000
    assert await backend.members(KEYS.dirty(SHARD)) == {C1}
    assert await backend.client.get(KEYS.first(SHARD)) == str(now_ns // 1_000_000).encode()
    # The first-write marker keeps the oldest write (SET NX), and an event without a key is
    # never deduplicated: the same body twice counts twice.
    assert await backend.ingest(ev("2.5"), now_ns=now_ns + 5 * NS) == [Outcome.ACCEPTED]
    assert await backend.hot() == 5_000_000
    assert await backend.client.get(KEYS.first(SHARD)) == str(now_ns // 1_000_000).encode()
    assert await backend.client.keys(KEYS.prefix + "idem:*") == []


async def test_duplicate_counts_nothing_again(backend: Backend) -> None:
    assert await backend.ingest(ev(3, key="k")) == [Outcome.ACCEPTED]
    # 3, "3" and "3.0" are the same quantity, hence the same event.
    assert await backend.ingest(ev("3.0", key="k")) == [Outcome.DUPLICATE]
    assert await backend.ingest(ev("3", key="k")) == [Outcome.DUPLICATE]
    assert await backend.hot() == 3_000_000
    assert await backend.members(KEYS.dirty(SHARD)) == {C1}


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"quantity": "3.000001"}, id="quantity"),
        pytest.param({"customer": C2}, id="customer"),
        pytest.param({"resource": "gb"}, id="resource"),
        pytest.param({"timestamp": None}, id="timestamp-omitted"),
    ],
)
async def test_conflict_counts_nothing(backend: Backend, other: dict[str, Any]) -> None:
    assert await backend.ingest(ev("3", key="k")) == [Outcome.ACCEPTED]
    assert await backend.ingest(ev(**{"quantity": "3", "key": "k", **other})) == [Outcome.CONFLICT]
    assert await backend.hot() == 3_000_000
    assert await backend.hot(field=GB) is None
    assert await backend.exists(KEYS.hot(C2)) == 0


async def test_overflow_counts_nothing_and_claims_no_key(backend: Backend) -> None:
    await backend.fill(LIMIT)
    await backend.drain("f1")
    assert await backend.ack("f1") == 1
    assert await backend.ingest(ev("0.000001", key="k")) == [Outcome.OVERFLOW]
    assert await backend.hot() is None
    assert await backend.exists(KEYS.dirty(SHARD), KEYS.first(SHARD)) == 0
    # A refused event leaves no idempotency record: the key is free for a corrected retry.
    assert await backend.client.keys(KEYS.prefix + "idem:*") == []
    assert await backend.ingest(ev("0.000001", key="k", resource="gb")) == [Outcome.ACCEPTED]
    assert await backend.hot(field=GB) == 1


# -- ingest: several events in one call ------------------------------------------------------


async def test_repeated_key_in_one_call_is_judged_against_its_first_occurrence(
    backend: Backend,
) -> None:
    outcomes = await backend.ingest(
        ev("1", key="k"),
        ev("2", key="k"),  # conflict with the first
        ev("1.000", key="k"),  # duplicate of the first, not a conflict with the second
        ev("1", key="k", customer=C2),  # conflict
        ev("2", key="j"),  # another key: its own event
        ev("2", key="j"),
    )
    assert outcomes == [
        Outcome.ACCEPTED,
        Outcome.CONFLICT,
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
        Outcome.ACCEPTED,
        Outcome.DUPLICATE,
    ]
    assert await backend.hot() == 3_000_000
    assert await backend.exists(KEYS.hot(C2)) == 0


async def test_key_stored_by_an_earlier_call_wins_over_one_in_the_call(backend: Backend) -> None:
    assert await backend.ingest(ev("1", key="k")) == [Outcome.ACCEPTED]
    assert await backend.ingest(ev("2", key="k"), ev("1", key="k")) == [
        Outcome.CONFLICT,
        Outcome.DUPLICATE,
    ]
    assert await backend.hot() == 1_000_000


async def test_overflowing_last_event_writes_nothing_but_earlier_ones_apply(
    backend: Backend,
) -> None:
    await backend.fill(LIMIT - 5)
    outcomes = await backend.ingest(
        ev("3", resource="gb", key="a"),
        ev("0.000005", key="b"),  # fills the hour exactly
        ev("0.000001", key="c"),  # one micro-unit too many
    )
    assert outcomes == [Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.OVERFLOW]
    assert await backend.hot(field=GB) == 3_000_000
    assert await backend.hot() == LIMIT
    fields = set()
    for name in await backend.client.keys(KEYS.prefix + "idem:*"):
        fields |= set(await backend.client.hkeys(name))
    assert fields == {idempotency_slot(k, CONFIG.fanout).field for k in ("a", "b")}
    # Running totals inside one call: an overflow does not use up room, a later event that
    # fits is still counted.
    await backend.fill(LIMIT - 10, customer=C2)
    outcomes = await backend.ingest(
        ev("0.000006", customer=C2),
        ev("0.000005", customer=C2),
        ev("0.000004", customer=C2),
    )
    assert outcomes == [Outcome.ACCEPTED, Outcome.OVERFLOW, Outcome.ACCEPTED]
    assert await backend.hot(C2) == LIMIT


async def test_a_script_error_in_the_decision_phase_writes_nothing(backend: Backend) -> None:
    # Hazard 4: Redis never rolls a script back, so every write must come after the last
    # thing that can fail. A malformed amount in the second event makes the script raise
    # while deciding; the first event's counter and key must not have been written.
    events = [ev("1", key="a"), ev("2.345678", key="b")]
    keys, args = build_call(TENANT, events, CONFIG, time.time_ns())
    args[args.index(2_345_678)] = "not-a-number"
    with pytest.raises(ResponseError):
        await backend.scripts.ingest(keys=keys, args=args)
    assert await backend.client.keys("*") == []


# -- ingest: the bound, exactly --------------------------------------------------------------


async def test_exactly_ten_to_the_twelve_units_accepted_one_micro_more_refused(
    backend: Backend,
) -> None:
    outcomes = await backend.ingest(*[ev(1_000_000_000) for _ in range(1000)])
    assert outcomes == [Outcome.ACCEPTED] * 1000
    assert await backend.client.hget(KEYS.hot(C1), API) == b"1000000000000000000"
    assert await backend.ingest(ev("0.000001")) == [Outcome.OVERFLOW]
    assert await backend.client.hget(KEYS.hot(C1), API) == b"1000000000000000000"


async def test_bound_at_the_limit_after_a_large_preset(backend: Backend) -> None:
    await backend.fill(LIMIT - 10**15)
    assert await backend.ingest(ev("1000000000"), ev("0.000001")) == [
        Outcome.ACCEPTED,
        Outcome.OVERFLOW,
    ]
    assert await backend.hot() == LIMIT


async def test_big_numbers_past_two_to_the_53_are_exact(backend: Backend) -> None:
    await backend.fill(999_999_999_999_999_999)
    assert await backend.ingest(ev("0.000001")) == [Outcome.ACCEPTED]
    assert await backend.client.hget(KEYS.hot(C1), API) == b"1000000000000000000"
    assert await backend.ingest(ev("0.000001")) == [Outcome.OVERFLOW]
    assert await backend.client.hget(KEYS.hot(C1), API) == b"1000000000000000000"


@pytest.mark.parametrize(
    "preset",
    [0, 2**53 + 1, 123_456_789_012_345_677, 999_999_999, 1_000_000_000, 899_999_999_999_999_999],
)
async def test_sum_of_many_large_events_is_exact(backend: Backend, preset: int) -> None:
    # Eleven maximal events add 10999999999999989 micro-units in one HINCRBY: odd and above
    # 2^53, so a double could not even hold the delta, let alone the running total.
    if preset:
        await backend.fill(preset)
    outcomes = await backend.ingest(*[ev(MAX_EVENT) for _ in range(11)], ev("0.000001"))
    assert outcomes == [Outcome.ACCEPTED] * 12
    assert await backend.hot() == preset + 11 * (10**15 - 1) + 1


@pytest.mark.parametrize(
    ("quantities", "total"),
    [
        # The script keeps amounts as {micro // 10^9, micro % 10^9}: these deltas make the
        # low halves add up to exactly 10^9 (or past it), which must carry into the high half.
        (["1500", "500"], 2_000_000_000),
        (["1000.000001", "999.999999"], 2_000_000_000),
        (["999.999999", "0.000001"], 1_000_000_000),
        (["1999.999999", "1999.999999"], 3_999_999_998),
    ],
)
async def test_a_carry_between_the_two_halves_is_exact(
    backend: Backend, quantities: list[str], total: int
) -> None:
    outcomes = await backend.ingest(*[ev(q) for q in quantities])
    assert outcomes == [Outcome.ACCEPTED] * len(quantities)
    assert await backend.hot() == total


@pytest.mark.parametrize("where", ["hot", "pending", "flushed", "spread"])
async def test_the_bound_counts_the_hour_wherever_its_units_are(
    backend: Backend, where: str
) -> None:
    # CONTRACT §2 bounds the hour, flushed or not: units frozen in a flush, or already in
    # PostgreSQL and forgotten by Redis, still take room.
    await backend.fill(LIMIT - 3 if where == "spread" else LIMIT - 1)
    if where != "hot":
        await backend.drain("f1")
    if where in ("flushed", "spread"):
        assert await backend.ack("f1") == 1
    if where == "spread":  # some flushed, some pending, some hot
        await backend.fill(1)
        await backend.drain("f2")
        await backend.fill(1)
    assert await backend.ingest(ev("0.000001")) == [Outcome.ACCEPTED]
    assert await backend.ingest(ev("0.000001")) == [Outcome.OVERFLOW]
    assert await backend.month_total() == LIMIT
    assert await backend.hour_total() == LIMIT


# -- ingest: idempotency records ---------------------------------------------------------------


async def test_idempotency_records_are_8_byte_fields_in_an_expiring_window_hash(
    backend: Backend,
) -> None:
    now_ns = time.time_ns()
    events = [ev("1", key="evt_1"), ev("2", key="evt_2", customer=C3), ev("3")]
    assert await backend.ingest(*events, now_ns=now_ns) == [Outcome.ACCEPTED] * 3
    window = now_ns // NS // CONFIG.ttl
    stored: dict[bytes | str, bytes | str] = {}
    for event in events[:2]:
        assert event.idempotency_key is not None
        slot = idempotency_slot(event.idempotency_key, CONFIG.fanout)
        name = KEYS.idempotency(window, slot.slot)
        ttl = await backend.client.ttl(name)
        # Remembered at least one TTL from now (the hash outlives its window by one TTL).
        assert CONFIG.ttl + 60 - 5 <= ttl <= 2 * CONFIG.ttl + 60
        assert await backend.client.hget(name, slot.field) == event.fingerprint()
        stored |= await backend.client.hgetall(name)
    assert len(stored) == 2
    assert all(len(k) == 8 and len(v) == 8 for k, v in stored.items())
    idem_keys = await backend.client.keys(KEYS.prefix + "idem:*")
    assert {as_text(k) for k in idem_keys} <= {
        KEYS.idempotency(window, s) for s in range(CONFIG.fanout)
    }


async def test_a_key_is_found_from_the_neighbouring_windows_only(backend: Backend) -> None:
    now_ns = time.time_ns()
    ttl_ns = CONFIG.ttl * NS
    assert await backend.ingest(ev("1", key="k"), now_ns=now_ns) == [Outcome.ACCEPTED]
    # A server one window ahead or behind (clock skew, or simply the next window) still
    # sees it ...
    assert await backend.ingest(ev("1", key="k"), now_ns=now_ns + ttl_ns) == [Outcome.DUPLICATE]
    assert await backend.ingest(ev("2", key="k"), now_ns=now_ns - ttl_ns) == [Outcome.CONFLICT]
    # ... two windows on, it is forgotten.
    assert await backend.ingest(ev("1", key="k"), now_ns=now_ns + 2 * ttl_ns) == [Outcome.ACCEPTED]
    assert await backend.hot() == 2_000_000


# -- drain --------------------------------------------------------------------------------


async def test_drain_of_an_empty_shard_returns_nothing(backend: Backend) -> None:
    assert await backend.drain("f1") == []
    assert await backend.client.keys("*") == []  # not even the seq counter moved


async def test_drain_freezes_hot_as_pending_and_bumps_seq(backend: Backend) -> None:
    now_ns = time.time_ns()
    await backend.ingest(ev("1"), ev("2", resource="gb"), now_ns=now_ns)
    await backend.ingest(ev("4", customer=C2), ev("8", customer=C3), now_ns=now_ns + NS)
    reply = await backend.drain("f1", now_ms=now_ns // 1_000_000 + 5000)
    assert reply == [
        b"1",
        b"f1",
        b"3",
        str(now_ns // 1_000_000 + 5000).encode(),
        str(now_ns // 1_000_000).encode(),  # the oldest undrained write
        0,
    ]
    assert await backend.exists(KEYS.hot(C1), KEYS.hot(C2), KEYS.dirty(SHARD)) == 0
    assert await backend.exists(KEYS.first(SHARD)) == 0
    assert await backend.pending(C1) == {API: 1_000_000, GB: 2_000_000}
    assert await backend.pending(C2) == {API: 4_000_000}
    assert await backend.members(KEYS.pending_customers(SHARD)) == {C1, C2}
    meta = await backend.client.hgetall(KEYS.meta(SHARD))
    assert meta[b"seq"] == b"1"
    assert meta[b"flush_id"] == b"f1"
    assert meta[b"fields"] == b"3"
    assert await backend.client.get(KEYS.seq(SHARD)) == b"1"
    # Another shard is not touched.
    assert await backend.hot(C3) == 8_000_000
    assert await backend.members(KEYS.dirty(shard_of(C3))) == {C3}


async def test_second_drain_resumes_the_pending_flush(backend: Backend) -> None:
    await backend.ingest(ev("1"))
    first = await backend.drain("f1", now_ms=1000)
    await backend.ingest(ev("2"))  # new hot data must not join the frozen flush
    again = await backend.drain("f2", now_ms=2000)
    assert first[-1] == 0
    assert again == [*first[:5], 1]
    assert again[:2] == [b"1", b"f1"]
    assert await backend.client.get(KEYS.seq(SHARD)) == b"1"
    assert await backend.pending() == {API: 1_000_000}
    assert await backend.hot() == 2_000_000


async def test_drain_after_ack_starts_the_next_seq(backend: Backend) -> None:
    await backend.ingest(ev("1"))
    await backend.drain("f1")
    assert await backend.ack("f1") == 1
    assert await backend.drain("f2") == []  # acked and nothing new: nothing to flush
    await backend.ingest(ev("2"))
    reply = await backend.drain("f2")
    assert reply[:3] == [b"2", b"f2", b"1"]
    assert reply[-1] == 0
    assert await backend.pending() == {API: 2_000_000}


# -- ack --------------------------------------------------------------------------------


async def test_ack_with_another_flush_id_does_nothing(backend: Backend) -> None:
    await backend.ingest(ev("1"), ev("2", customer=C2))
    drained = await backend.drain("f1")
    before = await backend.client.hgetall(KEYS.meta(SHARD))
    assert await backend.ack("f0") == 0
    assert await backend.ack("") == 0
    assert await backend.client.hgetall(KEYS.meta(SHARD)) == before
    assert await backend.members(KEYS.pending_customers(SHARD)) == {C1, C2}
    assert await backend.pending(C1) == {API: 1_000_000}
    assert await backend.pending(C2) == {API: 2_000_000}
    assert await backend.drain("f2") == [*drained[:5], 1]


async def test_ack_with_the_committed_flush_id_deletes_pending_data_and_meta(
    backend: Backend,
) -> None:
    await backend.ingest(ev("1"), ev("2", customer=C2))
    await backend.drain("f1")
    await backend.ingest(ev("5"))  # arrives after the drain: hot, and must survive the ack
    assert await backend.ack("f1") == 1
    assert (
        await backend.exists(
            KEYS.pending(C1), KEYS.pending(C2), KEYS.pending_customers(SHARD), KEYS.meta(SHARD)
        )
        == 0
    )
    assert await backend.client.get(KEYS.seq(SHARD)) == b"1"  # seq never goes back
    assert await backend.hot() == 5_000_000
    assert await backend.members(KEYS.dirty(SHARD)) == {C1}
    assert await backend.ack("f1") == 0  # a second ack of the same flush is a no-op


async def test_ack_with_nothing_pending_does_nothing(backend: Backend) -> None:
    await backend.ingest(ev("1"))
    assert await backend.ack("f1") == 0
    assert await backend.ack("") == 0
    assert await backend.hot() == 1_000_000


# -- read -------------------------------------------------------------------------------


async def test_read_of_a_customer_with_nothing(backend: Backend) -> None:
    assert await backend.read() == ({}, {}, 0, 0)


async def test_read_follows_a_flush_through_each_step(backend: Backend) -> None:
    await backend.ingest(ev("1"), ev("2", resource="gb"), ev("4", customer=C2))
    assert await backend.read() == ({API: 1_000_000, GB: 2_000_000}, {}, 0, 0)
    await backend.drain("f1")
    assert await backend.read() == ({}, {API: 1_000_000, GB: 2_000_000}, 1, 1)
    await backend.ingest(ev("0.5"))
    assert await backend.read() == ({API: 500_000}, {API: 1_000_000, GB: 2_000_000}, 1, 1)
    assert await backend.read(C2) == ({}, {API: 4_000_000}, 1, 1)
    await backend.ack("f1")
    assert await backend.read() == ({API: 500_000}, {}, 0, 1)
    await backend.drain("f2")
    assert await backend.read() == ({}, {API: 500_000}, 2, 2)


async def test_one_read_of_several_customers_is_each_customers_own_read(
    backend: Backend,
) -> None:
    # Concurrent bills share one call of the script (app/coalescer.py): each customer's
    # part must be exactly what a call of its own returns, shards and repeats included.
    await backend.ingest(ev("1"), ev("4", customer=C2), ev("3", customer=C3))
    await backend.drain("f1")
    await backend.ingest(ev("0.5"), ev("2", customer=C3))
    customers = [C1, C3, C2, "c:none", C1]
    together = await read_unflushed(backend.scripts, TENANT, customers)
    alone = [(await read_unflushed(backend.scripts, TENANT, [c]))[0] for c in customers]
    assert together == alone
    assert together[0] == Unflushed({API: 500_000}, {API: 1_000_000}, 1, 1)
    assert together[1] == Unflushed({API: 5_000_000}, {}, 0, 0)  # another shard
    assert together[2] == Unflushed({}, {API: 4_000_000}, 1, 1)
    assert together[3] == Unflushed({}, {}, 0, 0)


async def test_read_ignores_a_pending_hash_without_meta(backend: Backend) -> None:
    # Pending data counts only while its flush is in flight (meta present).
    await backend.client.hset(KEYS.pending(C1), API, "7")
    await backend.client.set(KEYS.seq(SHARD), "3")
    assert await backend.read() == ({}, {}, 0, 3)


# -- ingest while a flush is in flight ---------------------------------------------------


async def test_ingest_after_drain_goes_to_hot_and_the_bound_sees_pending(
    backend: Backend,
) -> None:
    await backend.fill(999_999_999_999_999_998)
    await backend.drain("f1")
    assert await backend.ingest(ev("0.000001")) == [Outcome.ACCEPTED]
    assert await backend.hot() == 1
    assert await backend.pending() == {API: 999_999_999_999_999_998}
    assert await backend.members(KEYS.dirty(SHARD)) == {C1}
    assert await backend.exists(KEYS.first(SHARD)) == 1
    assert await backend.ingest(ev("0.000001")) == [Outcome.ACCEPTED]
    assert await backend.ingest(ev("0.000001")) == [Outcome.OVERFLOW]
    assert await backend.hot() == 2
    # The frozen flush is untouched, and resuming it still returns the same field count.
    assert await backend.pending() == {API: 999_999_999_999_999_998}
    assert (await backend.drain("f2"))[:3] == [b"1", b"f1", b"1"]


async def test_bound_still_holds_after_the_hour_was_flushed(backend: Backend) -> None:
    assert (
        await backend.ingest(*[ev(1_000_000_000) for _ in range(1000)]) == [Outcome.ACCEPTED] * 1000
    )
    await backend.drain("f1")
    assert await backend.ack("f1") == 1  # committed to PostgreSQL, then forgotten by Redis
    assert await backend.ingest(ev("0.000001")) == [Outcome.OVERFLOW]


# -- ingest: the bound over flushed hours (month totals and seeded hours) --------------------


def at(hour: int) -> str:
    """A timestamp inside ``hour``."""
    return datetime.fromtimestamp(hour * 3600 + 90, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Another hour of HOUR's month (the next one is the current hour, if still that month).
OTHER = next(h for h in (HOUR + 1, HOUR - 1) if month_of_hour(h)[0] == month_of_hour(HOUR)[0])
# Three hours of one day ten days ago: always one month, always inside the accepted window.
DAY = (hour_of(time.time_ns()) - 240) // 24 * 24
OLD = [DAY + 1, DAY + 2, DAY + 3]


async def test_month_totals_count_every_accepted_unit_and_expire_with_the_month(
    backend: Backend,
) -> None:
    assert (
        await backend.ingest(ev("1.5"), ev("2", resource="gb"), ev("3", key="k"))
        == [Outcome.ACCEPTED] * 3
    )
    assert await backend.ingest(ev("3", key="k"), ev("9", customer=C2)) == [
        Outcome.DUPLICATE,
        Outcome.ACCEPTED,
    ]
    month, expire_at = month_of_hour(HOUR)
    assert await backend.client.hgetall(KEYS.totals(C1, month)) == {
        b"api_call": b"4500000",
        b"gb": b"2000000",
    }
    assert await backend.month_total(C2) == 9_000_000
    # Kept until 36 days after the month ends: events are accepted up to 35 days old.
    end = datetime.fromtimestamp(HOUR * 3600, tz=UTC).replace(
        day=28, hour=0, minute=0, second=0
    ) + (datetime(2000, 1, 5, tzinfo=UTC) - datetime(2000, 1, 1, tzinfo=UTC))
    end = end.replace(day=1)
    assert expire_at == int(end.timestamp()) + 36 * 86_400
    assert await backend.client.expiretime(KEYS.totals(C1, month)) == expire_at


async def test_a_full_month_seeds_each_further_hour_once(backend: Backend) -> None:
    await backend.fill(LIMIT)
    await backend.drain("f1")
    assert await backend.ack("f1") == 1
    assert backend.seeds == 0
    # The month is full, so the other hour cannot be decided from it: it is seeded (0) once.
    assert await backend.ingest(ev("7", timestamp=at(OTHER))) == [Outcome.ACCEPTED]
    assert backend.seeds == 1
    other = meter_field("api_call", OTHER)
    assert await backend.hour_total(meter=other) == 7_000_000
    assert await backend.ingest(ev("8", timestamp=at(OTHER))) == [Outcome.ACCEPTED]
    assert backend.seeds == 1
    assert await backend.hour_total(meter=other) == 15_000_000
    assert await backend.hot(field=other) == 15_000_000
    # The full hour itself: seeded from its flushed units, then refused without a seed.
    assert await backend.ingest(ev("0.000001")) == [Outcome.OVERFLOW]
    assert await backend.ingest(ev("0.000001")) == [Outcome.OVERFLOW]
    assert backend.seeds == 2
    assert await backend.hour_total() == LIMIT
    assert await backend.month_total() == LIMIT + 15_000_000


async def test_a_call_that_fills_the_month_itself_seeds_what_it_cannot_decide(
    backend: Backend,
) -> None:
    events = [ev(1_000_000_000) for _ in range(1000)]
    events += [ev("0.000001", timestamp=at(OTHER)), ev("0.000001")]
    outcomes = await backend.ingest(*events)
    assert outcomes == [Outcome.ACCEPTED] * 1001 + [Outcome.OVERFLOW]
    assert await backend.hot() == LIMIT
    assert await backend.hot(field=meter_field("api_call", OTHER)) == 1


async def test_month_totals_saturate_and_hours_still_hold_the_bound(backend: Backend) -> None:
    for hour in OLD:
        events = [ev(1_000_000_000, timestamp=at(hour)) for _ in range(1000)]
        events.append(ev("0.000001", timestamp=at(hour)))
        assert await backend.ingest(*events) == [Outcome.ACCEPTED] * 1000 + [Outcome.OVERFLOW]
    stored = await backend.client.hgetall(KEYS.totals(C1, month_of_hour(OLD[0])[0]))
    # 3 * 10^18 micro-units in the month: its total stops at 2 * 10^18 (far from a 64-bit
    # overflow). Each hour was seeded once (OLD[0] by its refused micro-unit, the others by
    # their first event) and holds its exact total.
    assert stored == {
        b"api_call": str(2 * LIMIT).encode(),
        **{meter_field("api_call", h).encode(): str(LIMIT).encode() for h in OLD},
    }
    assert backend.seeds == 3
    for hour in OLD:
        assert await backend.ingest(ev("0.000001", timestamp=at(hour))) == [Outcome.OVERFLOW]
    assert backend.seeds == 3
    for hour in OLD:
        assert await backend.hot(field=meter_field("api_call", hour)) == LIMIT


async def test_without_a_seeder_an_undecided_call_writes_nothing(backend: Backend) -> None:
    await backend.fill(LIMIT)
    await backend.drain("f1")
    assert await backend.ack("f1") == 1
    before = await snapshot(backend.client)
    with pytest.raises(BoundBusyError):
        await backend.ingest(ev("1", key="k"), ev("1", resource="gb"), seeder=False)
    assert await snapshot(backend.client) == before


async def test_a_seed_is_refused_when_an_event_may_have_entered_the_hour(
    backend: Backend,
) -> None:
    await backend.fill(5)
    month, expire_at = month_of_hour(HOUR)
    keys = [KEYS.totals(C1, month), KEYS.hot(C1), KEYS.seq(SHARD)]
    assert await backend.scripts.seed(keys=keys, args=[API, 9, "4", "", expire_at]) == 0
    assert await backend.hour_total() is None
    await backend.drain("f1")  # the hot field is gone, the seq moved
    assert await backend.scripts.seed(keys=keys, args=[API, 5, "5", "", expire_at]) == 0
    assert await backend.scripts.seed(keys=keys, args=[API, 5, "", "", expire_at]) == 0
    assert await backend.hour_total() is None
    assert await backend.scripts.seed(keys=keys, args=[API, 5, "", "1", expire_at]) == 1
    assert await backend.hour_total() == 5
    # Seeded already: kept (the ingest script has kept it exact since).
    assert await backend.scripts.seed(keys=keys, args=[API, 9, "", "1", expire_at]) == 1
    assert await backend.hour_total() == 5
    assert await backend.client.expiretime(keys[0]) == expire_at


class Intruder(Backend):
    """Between the guard read and the seed, one more micro-unit enters the same hour (the
    month still has room for it, not for the undecided event)."""

    async def between(self, event: Event) -> None:
        small = ev("0.000001", timestamp=at(hour_of(event.timestamp_ns)))
        assert await apply_events(self.scripts, TENANT, [small], CONFIG) == [Outcome.ACCEPTED]


async def test_an_hour_that_keeps_taking_events_ends_in_busy(backend: Backend) -> None:
    await backend.fill(LIMIT - 10)
    await backend.drain("f1")
    assert await backend.ack("f1") == 1
    intruder = Intruder(backend.client, backend.scripts, backend.flushed)
    with pytest.raises(BoundBusyError, match="kept changing"):
        await intruder.ingest(ev("0.000011"))
    assert intruder.seeds == SEED_ROUNDS  # every seed refused, then the last call undecided
    assert await backend.hot() == SEED_ROUNDS  # the intruders; the event itself: nothing
    assert await backend.hour_total() is None


class BusyNeighbour(Backend):
    """Between the guard read and the seed, an event enters another (seeded) hour."""

    async def between(self, event: Event) -> None:
        other = ev("1", timestamp=at(OLD[0]))
        assert await apply_events(self.scripts, TENANT, [other], CONFIG) == [Outcome.ACCEPTED]


async def test_a_busy_hour_does_not_keep_another_from_being_seeded(backend: Backend) -> None:
    half = [ev(1_000_000_000, timestamp=at(OLD[0]))] * 500
    half += [ev(1_000_000_000, timestamp=at(OLD[1]))] * 500
    assert await backend.ingest(*half) == [Outcome.ACCEPTED] * 1000  # the month is full
    assert await backend.ingest(ev("1", timestamp=at(OLD[0]))) == [Outcome.ACCEPTED]
    assert backend.seeds == 1  # OLD[0] is seeded, with room left
    # While OLD[2] is read, OLD[0] takes an event: the month total moves, OLD[2] does not.
    busy = BusyNeighbour(backend.client, backend.scripts, backend.flushed)
    assert await busy.ingest(ev("3", timestamp=at(OLD[2]))) == [Outcome.ACCEPTED]
    assert busy.seeds == 1
    month = month_of_hour(OLD[0])[0]
    totals = await backend.client.hgetall(KEYS.totals(C1, month))
    assert int(totals[meter_field("api_call", OLD[2]).encode()]) == 3_000_000
    assert int(totals[meter_field("api_call", OLD[0]).encode()]) == LIMIT // 2 + 2_000_000


class DownFor(Backend):
    """A seeder that cannot read one customer's hours (PostgreSQL down, for that read)."""

    async def seed(self, tenant: str, event: Event) -> bool:
        if event.customer_id == C2:
            raise DatabaseUnavailableError("postgresql is down")
        return await super().seed(tenant, event)


async def test_coalesced_events_that_need_a_seed_are_set_aside_and_the_rest_counted(
    backend: Backend,
) -> None:
    down = DownFor(backend.client, backend.scripts)
    await down.fill(LIMIT, customer=C2)
    await down.fill(LIMIT, customer=C3)
    events = [
        ev("1", key="a"),
        ev("0.000001", customer=C2, timestamp=at(OTHER)),  # needs a seed
        ev("0.000001", customer=C3, timestamp=at(OTHER)),  # needs a seed
        ev("2", key="a"),  # judged against the first event, as in one call
        ev("5", customer=C2, timestamp=at(OTHER)),  # same hour as a set-aside one
        ev("7", customer=C2, resource="gb"),
    ]
    results = await apply_each(down.scripts, TENANT, events, CONFIG)
    assert [type(r) for r in results] == [
        Outcome,
        NeedsSeedError,
        NeedsSeedError,
        Outcome,
        NeedsSeedError,
        Outcome,
    ]
    assert [r for r in results if isinstance(r, Outcome)] == [
        Outcome.ACCEPTED,
        Outcome.CONFLICT,
        Outcome.ACCEPTED,
    ]
    # Nothing was seeded: a coalesced call never reads PostgreSQL.
    month = month_of_hour(OTHER)[0]
    for customer in (C2, C3):  # month fields only, no hour's
        assert not [f for f in await down.client.hkeys(KEYS.totals(customer, month)) if b"|" in f]
    assert await down.hot() == 1_000_000
    assert await down.hot(C2, GB) == 7_000_000
    # Their requests then go alone, with a seeder: C3's hour is read and decided; C2's
    # cannot be read, and its request fails whole, counting nothing.
    assert await down.ingest(events[2]) == [Outcome.ACCEPTED]
    assert await down.hot(C3, meter_field("api_call", OTHER)) == 1
    with pytest.raises(DatabaseUnavailableError):
        await down.ingest(events[1], ev("1"))
    assert await down.hot(C2, meter_field("api_call", OTHER)) is None
    assert await down.hot() == 1_000_000
