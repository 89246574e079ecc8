"""The per-hour bound (CONTRACT §2: 10¹² units per customer, resource type and hour) holds
for hours already flushed to PostgreSQL, against a real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from app.apikeys import Scope
from app.hotpath import bound
from app.hotpath.bound import HourSeeder, month_of_hour
from app.hotpath.events import Event
from app.hotpath.ingest import IdempotencyConfig, Outcome, apply_events
from app.hotpath.keys import TenantKeys, meter_field
from app.repo.pool import create_pool
from app.scripts import Scripts
from app.settings import Settings
from app.timestamps import hour_of
from app.usage_reads import read_customer_usage
from app.worker.flusher import Flusher
from tests.http import client_for
from tests.keys import make_key

pytestmark = pytest.mark.integration

LIMIT = 10**12
NOW = datetime.now(UTC)
# The previous hour and another of its month: both inside the accepted window.
HOUR = hour_of(int(NOW.timestamp()) * 10**9) - 1
OTHER = next(h for h in (HOUR + 1, HOUR - 1) if month_of_hour(h)[0] == month_of_hour(HOUR)[0])


def ts(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600 + 60, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event(quantity: object, hour: int = HOUR, customer: str = "big") -> dict[str, object]:
    return {
        "customer_id": customer,
        "resource_type": "bytes",
        "quantity": quantity,
        "timestamp": ts(hour),
    }


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(settings)
    yield created
    await created.close()


async def flush(settings: Settings, redis: aioredis.Redis, pool: asyncpg.Pool) -> None:
    await Flusher(settings, redis, pool).flush_all(lease_wait=0)
    assert not await redis.keys("t:*:pend:*")


async def usage_of(app: Starlette, key: str, hour: int) -> Decimal:
    """The customer's units in ``hour`` as GET /api/v1/usage reads them (hot + cold)."""
    async with client_for(app, key) as client:
        response = await client.get(
            "/api/v1/usage/big",
            params={"granularity": "hour", "from": ts(hour - 1), "to": ts(hour)},
        )
    assert response.status_code == 200, response.text
    points = [p for s in response.json()["series"] for p in s["points"]]
    return sum((Decimal(p["quantity"]) for p in points), Decimal(0))


async def test_an_hour_flushed_to_the_bound_takes_no_more(
    app: Starlette, settings: Settings, redis: aioredis.Redis, pool: asyncpg.Pool
) -> None:
    key = await make_key(settings.database_url, "acme", Scope.ADMIN)
    async with client_for(app, key) as client:
        # 999 of the largest events, flushed; then one more fills the hour exactly.
        batch = await client.post("/api/v1/usage/batch", json={"events": [event(10**9)] * 999})
        assert batch.status_code == 202, batch.text
        assert batch.json()["accepted"] == 999
        await flush(settings, redis, pool)
        assert (await client.post("/api/v1/usage", json=event(10**9))).status_code == 202
        await flush(settings, redis, pool)
        # Redis holds nothing of the hour now: only PostgreSQL knows it is full.
        assert not await redis.keys("t:{acme}:hot:*")
        refused = await client.post("/api/v1/usage", json=event("0.000001"))
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "quantity_overflow"
        mixed = await client.post(
            "/api/v1/usage/batch",
            json={"events": [event("0.000001"), event("2.5", OTHER), event(1, customer="small")]},
        )
        assert mixed.status_code == 202, mixed.text
        statuses = [r["status"] for r in mixed.json()["results"]]
        assert statuses == ["rejected", "accepted", "accepted"]
        assert mixed.json()["results"][0]["error"]["code"] == "quantity_overflow"
        # Refused again after the other hour's units are flushed too, and the counts are
        # exactly what was accepted.
        await flush(settings, redis, pool)
        again = await client.post("/api/v1/usage", json=event("0.000001"))
        assert again.status_code == 422
        assert await usage_of(app, key, HOUR) == LIMIT
        assert await usage_of(app, key, OTHER) == Decimal("2.5")
        # Any amount in the other hour still fits (its own bound is far away).
        assert (await client.post("/api/v1/usage", json=event(10**9, OTHER))).status_code == 202


@pytest.mark.parametrize("stop_at", ["after_drain", "after_commit"])
async def test_an_hour_seeds_exactly_mid_flush(
    settings: Settings, redis: aioredis.Redis, pool: asyncpg.Pool, stop_at: str
) -> None:
    """HourSeeder's exact read counts flushed, in-flight (drained and not committed, or
    committed and not acked) and hot units once each; the seeded total then decides."""
    tenant = f"mid_{stop_at}"
    await make_key(settings.database_url, tenant, Scope.INGEST)  # the tenant, for the flusher
    scripts = Scripts.register(redis)
    seeder = HourSeeder(redis, scripts, pool)
    keys = TenantKeys(tenant)

    def ev(micro: int, hour: int = HOUR) -> Event:
        return Event("big", "bytes", micro, (hour * 3600 + 60) * 10**9, True, None)

    config = IdempotencyConfig(86_400, 16)

    async def ingest(*events: Event) -> list[Outcome]:
        return await apply_events(scripts, tenant, events, config, seeder=seeder)

    big = 10**15  # the largest event, in micro-units
    assert await ingest(*[ev(big)] * 600) == [Outcome.ACCEPTED] * 600
    await flush(settings, redis, pool)  # 600 flushed
    assert await ingest(*[ev(big)] * 200) == [Outcome.ACCEPTED] * 200

    class StopError(Exception):
        pass

    async def crash(name: str) -> None:
        if name == stop_at:
            raise StopError

    with pytest.raises(StopError):  # 200 drained (and committed), still pending in Redis
        await Flusher(settings, redis, pool, checkpoint=crash).flush_all(lease_wait=0)
    assert await redis.keys(f"t:{{{tenant}}}:pend:*")
    committed = await pool.fetchval("SELECT count(*) FROM flushes WHERE tenant = $1", tenant)
    assert committed == (1 if stop_at == "after_drain" else 2)
    assert await ingest(*[ev(big)] * 199, ev(big - 1)) == [Outcome.ACCEPTED] * 200  # hot
    month = month_of_hour(HOUR)[0]
    # The month holds 10^18 - 1: the next micro-unit anywhere in it needs the hour's total.
    assert int(await redis.hget(keys.totals("big", month), "bytes") or 0) == LIMIT * 10**6 - 1
    assert await redis.hget(keys.totals("big", month), meter_field("bytes", HOUR)) is None
    assert await ingest(ev(1), ev(1)) == [Outcome.ACCEPTED, Outcome.OVERFLOW]
    seeded = await redis.hget(keys.totals("big", month), meter_field("bytes", HOUR))
    assert int(seeded or 0) == LIMIT * 10**6
    # The crashed flush is resumed and acked; everything is in PostgreSQL, the hour full.
    await flush(settings, redis, pool)
    await flush(settings, redis, pool)
    total = await pool.fetchval(
        "SELECT sum(quantity) FROM usage_records"
        " WHERE tenant = $1 AND customer_id = 'big' AND bucket_start = $2",
        tenant,
        datetime.fromtimestamp(HOUR * 3600, tz=UTC),
    )
    assert total == LIMIT
    assert await ingest(ev(1)) == [Outcome.OVERFLOW]
    assert await ingest(ev(1, OTHER)) == [Outcome.ACCEPTED]


def micro_event(micro: int, hour: int = HOUR) -> Event:
    return Event("big", "bytes", micro, (hour * 3600 + 60) * 10**9, True, None)


async def test_an_event_after_the_exact_read_refuses_the_seed(
    settings: Settings,
    redis: aioredis.Redis,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real HourSeeder reads its guard before the exact read: an event that enters the
    hour right after that read refuses the seed, and the next round counts it."""
    await make_key(settings.database_url, "guard", Scope.INGEST)
    scripts = Scripts.register(redis)
    seeder = HourSeeder(redis, scripts, pool)
    config = IdempotencyConfig(86_400, 16)
    big = 10**15
    # The hour holds 10^18 - 20 micro-units (flushed), another hour 10: the month 10^18 - 10.
    filled = [micro_event(big)] * 999 + [micro_event(big - 20), micro_event(10, OTHER)]
    assert await apply_events(scripts, "guard", filled, config) == [Outcome.ACCEPTED] * 1001
    await flush(settings, redis, pool)
    reads = 0

    async def read_then_intrude(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        usage = await read_customer_usage(*args, **kwargs)
        reads += 1
        if reads == 1:  # one micro-unit fits the month: it enters the hour after the read
            intruder = await apply_events(scripts, "guard", [micro_event(1)], config)
            assert intruder == [Outcome.ACCEPTED]
        return usage

    monkeypatch.setattr(bound, "read_customer_usage", read_then_intrude)
    # 15 more do not fit the month (10^18 - 9 + 15): the hour must be read; with the
    # intruder it holds 10^18 - 19, so they fit the hour.
    outcomes = await apply_events(scripts, "guard", [micro_event(15)], config, seeder=seeder)
    assert outcomes == [Outcome.ACCEPTED]
    assert reads == 2  # the first seed was refused
    seeded = await redis.hget(
        TenantKeys("guard").totals("big", month_of_hour(HOUR)[0]), meter_field("bytes", HOUR)
    )
    assert int(seeded or 0) == LIMIT * 10**6 - 4  # exact: the intruder is in it
    refused = await apply_events(scripts, "guard", [micro_event(5)], config, seeder=seeder)
    assert refused == [Outcome.OVERFLOW]


async def test_concurrent_requests_for_one_hour_share_its_read(
    settings: Settings,
    redis: aioredis.Redis,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await make_key(settings.database_url, "shared", Scope.INGEST)
    scripts = Scripts.register(redis)
    seeder = HourSeeder(redis, scripts, pool)
    config = IdempotencyConfig(86_400, 16)
    full = [micro_event(10**15)] * 1000
    assert await apply_events(scripts, "shared", full, config) == [Outcome.ACCEPTED] * 1000
    await flush(settings, redis, pool)
    reads = 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)  # a slow PostgreSQL: the others arrive meanwhile
        return await read_customer_usage(*args, **kwargs)

    monkeypatch.setattr(bound, "read_customer_usage", counted)
    outcomes = await asyncio.gather(
        *[
            apply_events(scripts, "shared", [micro_event(1, OTHER)], config, seeder=seeder)
            for _ in range(20)
        ]
    )
    assert outcomes == [[Outcome.ACCEPTED]] * 20
    assert reads == 1
    assert await redis.hget(TenantKeys("shared").hot("big"), meter_field("bytes", OTHER)) == b"20"
