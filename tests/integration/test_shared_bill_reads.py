"""Concurrent bills share one Redis read and one PostgreSQL statement (app/coalescer.py),
and each is still exactly its own customer's bill."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from app import application, usage_reads
from app.apikeys import Scope
from app.application import BILL_READS_IN_FLIGHT, create_app
from app.hotpath.keys import TenantKeys, shard_of
from app.repo.pool import create_pool
from app.repo.usage import ColdRead, read_cold, rollup
from app.settings import Settings
from app.worker.flusher import Flusher
from tests.conftest import running
from tests.http import client_for
from tests.integration.test_billing import PRO, flush
from tests.keys import make_key

NOW = datetime.now(UTC)
HOUR = NOW.replace(minute=0, second=0, microsecond=0)
LAST_MONTH = (HOUR.replace(day=1) - timedelta(days=1)).replace(hour=0)
CUSTOMERS = [f"sb-{n}" for n in range(12)]


def ts(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def ingest(app: Starlette, key: str, round_: int) -> None:
    events = [
        {
            "customer_id": customer,
            "resource_type": resource,
            "quantity": f"{n + 1}.{round_}5",
            "timestamp": ts(at),
        }
        for n, customer in enumerate(CUSTOMERS)
        for resource in ("api_call", "seats")
        for at in (HOUR, LAST_MONTH)
    ]
    async with client_for(app, key) as client:
        response = await client.post("/api/v1/usage/batch", json={"events": events})
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(events)


async def evalsha_calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def without_clock(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "as_of"}


async def test_concurrent_bills_share_reads_and_each_is_its_own_exact_bill(
    app: Starlette, settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    admin = await make_key(database_url, "shared", Scope.ADMIN)
    rival = await make_key(database_url, "shared-rival", Scope.ADMIN)
    async with client_for(app, admin) as client:
        assert (await client.put("/api/v1/plans/pro", json=PRO)).status_code in (200, 201)
        # Most customers on the plan, two with usage and no customer record, one with a
        # record and no usage; "sb-none" is nobody (404).
        for customer in [*CUSTOMERS[:10], "sb-idle"]:
            response = await client.put(f"/api/v1/customers/{customer}", json={"plan_id": "pro"})
            assert response.status_code in (200, 201), response.text
    assert len({shard_of(c) for c in CUSTOMERS}) > 1  # the shared reads span shards
    # Usage in every state a read merges: rolled up, flushed and not rolled up, hot.
    await ingest(app, admin, 1)
    await flush(settings, redis)
    pool = await create_pool(settings)
    try:
        assert await rollup(pool, 0, statement_timeout=5.0) >= 1
    finally:
        await pool.close()
    await ingest(app, admin, 2)
    await flush(settings, redis)
    await ingest(app, admin, 3)

    last_month = LAST_MONTH.strftime("%Y-%m")
    paths = [
        (admin, f"/api/v1/billing/{customer}{query}")
        for customer in [*CUSTOMERS, "sb-idle", "sb-none"]
        for query in ("", f"?period={last_month}")
    ] + [(rival, f"/api/v1/billing/{CUSTOMERS[0]}")]

    # The same bills read one at a time, without sharing, by another API process.
    alone: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    unshared = create_app(dataclasses.replace(settings, bill_coalesce=False))
    async with running(unshared):
        for key, path in paths:
            async with client_for(unshared, key) as client:
                response = await client.get(path)
            alone[(key, path)] = (response.status_code, without_clock(response.json()))

    async with client_for(app, admin) as warm:  # the key cache filled, as in production
        assert (await warm.get(f"/api/v1/billing/{CUSTOMERS[0]}")).status_code == 200
    async with client_for(app, rival) as warm:
        assert (await warm.get(f"/api/v1/billing/{CUSTOMERS[0]}")).status_code == 404

    async def get(key: str, path: str) -> tuple[int, dict[str, Any]]:
        async with client_for(app, key) as client:
            response = await client.get(path)
        return response.status_code, without_clock(response.json())

    before = await evalsha_calls(redis)
    together = await asyncio.gather(*(get(key, path) for key, path in paths))
    calls = await evalsha_calls(redis) - before

    assert dict(zip(paths, together, strict=True)) == alone
    statuses = [status for status, _ in together]
    assert statuses.count(404) == 2 + 1  # sb-none in both months, and the other tenant's
    assert statuses.count(200) == len(paths) - 3
    some = dict(zip(paths, together, strict=True))[(admin, f"/api/v1/billing/{CUSTOMERS[3]}")]
    usage = {
        line["resource_type"]: line["quantity"]
        for line in some[1]["lines"]
        if line["type"] == "usage"
    }
    # 4.15 + 4.25 + 4.35 of each resource type this month: rolled up, flushed, hot.
    assert usage == {"api_call": "12.75", "seats": "12.75"}
    # 29 bills in 3 groups (two months, and another tenant) in far fewer Redis calls.
    assert 3 <= calls <= len(paths) // 2, calls


class StopError(Exception):
    pass


def stop_at(step: str) -> Callable[[str], Awaitable[None]]:
    async def checkpoint(name: str) -> None:
        if name == step:
            raise StopError(step)

    return checkpoint


async def test_bills_sharing_a_read_mid_flush_are_each_exact(
    app: Starlette,
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One shared read over three shards in three states: a flush drained and not
    committed, one committed and not acked, and a shard at rest (its own seq). Each
    customer is read once per shared read, however many of its bills share it."""
    tenant = "shared-mid"
    admin = await make_key(database_url, tenant, Scope.ADMIN)
    by_shard = {shard_of(f"mid-{n}"): f"mid-{n}" for n in range(40)}
    drained, committed, resting = list(by_shard.values())[:3]
    customers = [drained, committed, resting]
    sent: dict[str, Decimal] = {c: Decimal(0) for c in customers}

    async def ingest(round_: int) -> None:
        events = [
            {"customer_id": c, "resource_type": "api_call", "quantity": f"{n + 1}.{round_}"}
            for n, c in enumerate(customers)
        ]
        async with client_for(app, admin) as client:
            response = await client.post("/api/v1/usage/batch", json={"events": events})
        assert response.json()["accepted"] == len(events)
        for event in events:
            sent[event["customer_id"]] += Decimal(event["quantity"])

    await ingest(1)
    await flush(settings, redis)  # every shard at seq 1
    await ingest(2)
    pool = await create_pool(settings)
    try:
        for customer, step in ((drained, "after_drain"), (committed, "after_commit")):
            flusher = Flusher(settings, redis, pool, checkpoint=stop_at(step))
            with pytest.raises(StopError):
                await flusher.flush_shard(tenant, shard_of(customer))
    finally:
        await pool.close()
    await ingest(3)
    assert await redis.exists(TenantKeys(tenant).meta(shard_of(drained)))
    assert await redis.exists(TenantKeys(tenant).meta(shard_of(committed)))
    assert not await redis.exists(TenantKeys(tenant).meta(shard_of(resting)))

    paths = [f"/api/v1/billing/{c}" for c in customers] * 3
    unshared = create_app(dataclasses.replace(settings, bill_coalesce=False))
    async with running(unshared), client_for(unshared, admin) as client:
        alone = [without_clock((await client.get(path)).json()) for path in paths]
    statements: list[list[str]] = []

    async def recorded(*args: Any, **kwargs: Any) -> list[ColdRead]:
        statements.append([key.customer_id for key in args[4]])
        return await read_cold(*args, **kwargs)

    monkeypatch.setattr(usage_reads, "read_cold", recorded)
    async with client_for(app, admin) as client:
        assert (await client.get(paths[0])).status_code == 200  # the key cache warm
        statements.clear()
        before = await evalsha_calls(redis)
        responses = await asyncio.gather(*(client.get(path) for path in paths))
        calls = await evalsha_calls(redis) - before
    together = [without_clock(response.json()) for response in responses]
    assert together == alone
    for customer, body in zip(paths, together, strict=True):
        (line,) = [line for line in body["lines"] if line["type"] == "usage"]
        assert Decimal(line["quantity"]) == sent[customer.rsplit("/", 1)[1]]
    assert calls < len(paths), calls
    assert all(len(set(read)) == len(read) for read in statements), statements
    assert sum(len(read) for read in statements) < len(paths), statements


async def test_a_bill_waits_for_a_shared_read_no_longer_than_its_budget(
    settings: Settings, redis: aioredis.Redis, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared read that hangs (PostgreSQL frozen) answers every bill waiting on it, and
    every bill queued behind it, with 503 once its own budget is spent: within the
    contract's 2 s."""
    key = await make_key(database_url, "shared-hung", Scope.READ)

    async def hung(*args: Any, **kwargs: Any) -> list[Any]:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    monkeypatch.setattr(application, "read_usages", hung)
    hung_app = create_app(dataclasses.replace(settings, database_timeout=0.5))
    async with running(hung_app), client_for(hung_app, key) as client:
        started = time.monotonic()
        responses = await asyncio.gather(
            *(client.get(f"/api/v1/billing/c-{n}") for n in range(BILL_READS_IN_FLIGHT * 5))
        )
        elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [503] * len(responses)
    assert all(r.json()["error"]["code"] == "service_unavailable" for r in responses)
    assert elapsed < 2, elapsed
