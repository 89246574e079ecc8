"""Dependency outages: Redis down, Redis full, PostgreSQL down, with servers of our own."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from app.apikeys import Scope
from app.application import create_app
from app.embedded import PostgresServer, RedisServer
from app.hotpath.client import RedisConfigError
from app.settings import Settings
from app.worker.flusher import Flusher
from tests.conftest import running
from tests.http import client_for
from tests.integration.flush_helpers import (
    Truth,
    cold_totals,
    ingest_random,
    kill,
    leftovers,
    run_flush,
    start_flush,
)
from tests.keys import make_key
from tests.redis_state import snapshot
from tests.servers import own_servers

pytestmark = pytest.mark.slow

EVENT = {"customer_id": "c-1", "resource_type": "api_call", "quantity": 1}


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, PostgresServer]]:
    redis, postgres = own_servers()
    yield redis, postgres
    redis.stop()
    postgres.stop()


def settings_for(redis: RedisServer, postgres: PostgresServer, **extra: str) -> Settings:
    return Settings.from_env(
        {
            "REDIS_URL": redis.url,
            "DATABASE_URL": postgres.url,
            "TALLY_REDIS_TIMEOUT": "0.5",
            "TALLY_DATABASE_TIMEOUT": "1",
            "TALLY_KEY_CACHE_TTL": "0.2",
            "TALLY_FLUSH_INTERVAL": "0.05",
            "TALLY_STARTUP_TIMEOUT": "5",
            **extra,
        }
    )


async def test_redis_down_is_503_quickly_and_ingest_resumes(
    servers: tuple[RedisServer, PostgresServer],
) -> None:
    redis, postgres = servers
    settings = settings_for(redis, postgres)
    key = await make_key(postgres.url, "acme", Scope.INGEST)
    app = create_app(settings)
    async with running(app), client_for(app, key) as client:
        assert (await client.post("/api/v1/usage", json=EVENT)).status_code == 202
        redis.kill()
        started = time.monotonic()
        down = await client.post("/api/v1/usage", json=EVENT)
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "service_unavailable"
        assert time.monotonic() - started < 2
        batch = await client.post("/api/v1/usage/batch", json={"events": [EVENT]})
        assert batch.status_code == 503
        redis.start()  # same data (AOF), empty script cache: scripts are loaded again
        for _ in range(20):
            response = await client.post("/api/v1/usage", json=EVENT)
            if response.status_code == 202:
                break
            await asyncio.sleep(0.1)
        assert response.status_code == 202
    check = aioredis.Redis.from_url(redis.url)
    values = [
        int(v)
        for k in await check.keys("t:{acme}:hot:*")
        for v in (await check.hgetall(k)).values()
    ]
    await check.aclose()
    assert sum(values) == 2_000_000  # the 503s changed nothing


async def test_redis_out_of_memory_refuses_ingest_whole_and_drains(
    servers: tuple[RedisServer, PostgresServer],
) -> None:
    redis, postgres = servers
    settings = settings_for(redis, postgres)
    key = await make_key(postgres.url, "acme", Scope.INGEST)
    client_redis = aioredis.Redis.from_url(redis.url)
    app = create_app(settings)
    truth: Truth = Counter()
    async with running(app), client_for(app, key) as client:
        await ingest_random(client_redis, truth, events=500)
        used = int((await client_redis.info("memory"))["used_memory"])
        await client_redis.config_set("maxmemory", str(used - 1024))
        before = {k: await client_redis.hgetall(k) for k in await client_redis.keys("t:*hot*")}
        full = await client.post("/api/v1/usage", json={**EVENT, "idempotency_key": "oom-1"})
        assert full.status_code == 503
        after = {k: await client_redis.hgetall(k) for k in await client_redis.keys("t:*hot*")}
        assert before == after
        # Draining still works under OOM (allow-oom) and frees memory.
        assert run_flush(settings, "--once").returncode == 0
        assert await cold_totals(postgres.url) == truth
        await client_redis.config_set("maxmemory", "0")
        retried = await client.post("/api/v1/usage", json={**EVENT, "idempotency_key": "oom-1"})
        assert retried.status_code == 202
        again = await client.post("/api/v1/usage", json={**EVENT, "idempotency_key": "oom-1"})
        assert again.status_code == 200
    await client_redis.aclose()


async def test_eviction_policy_refused_at_start(
    servers: tuple[RedisServer, PostgresServer],
) -> None:
    redis, postgres = servers
    client = aioredis.Redis.from_url(redis.url)
    await client.config_set("maxmemory-policy", "allkeys-lru")
    await client.aclose()
    app = create_app(settings_for(redis, postgres))
    with pytest.raises(RedisConfigError, match="noeviction"):
        async with running(app):
            pass


async def test_postgres_down_ingest_continues_bills_503(
    servers: tuple[RedisServer, PostgresServer],
) -> None:
    redis, postgres = servers
    settings = settings_for(redis, postgres)
    cached = await make_key(postgres.url, "acme", Scope.ADMIN)
    uncached = await make_key(postgres.url, "acme", Scope.INGEST)
    app = create_app(settings)
    async with running(app), client_for(app, cached) as client:
        assert (await client.post("/api/v1/usage", json=EVENT)).status_code == 202
        assert (await client.get("/api/v1/billing/c-1")).status_code == 200
        postgres.stop()
        await asyncio.sleep(0.3)  # past the key cache TTL: the key is served from cache
        ok = [(await client.post("/api/v1/usage", json=EVENT)).status_code for _ in range(20)]
        assert ok == [202] * 20
        started = time.monotonic()
        bill = await client.get("/api/v1/billing/c-1")
        assert bill.status_code == 503
        assert time.monotonic() - started < 2.5
        never_seen = await client.post(
            "/api/v1/usage", json=EVENT, headers={"Authorization": f"Bearer {uncached}"}
        )
        assert never_seen.status_code == 503  # cannot be checked: never 401
        postgres.start()
        for _ in range(40):
            bill = await client.get("/api/v1/billing/c-1")
            if bill.status_code == 200:
                break
            await asyncio.sleep(0.25)
        assert bill.status_code == 200
        assert bill.json()["lines"][0]["quantity"] == "21"


async def test_postgres_down_an_hour_past_its_month_is_503_and_counts_nothing(
    servers: tuple[RedisServer, PostgresServer],
) -> None:
    # A customer whose month holds 10^12 units: a new hour of it needs its flushed total
    # from PostgreSQL (app/hotpath/bound.py). Down: 503, nothing counted, other ingest goes on.
    redis, postgres = servers
    settings = settings_for(redis, postgres)
    key = await make_key(postgres.url, "acme", Scope.INGEST)
    now = datetime.now(UTC).replace(minute=1, second=0, microsecond=0)
    hour, other = now - timedelta(hours=1), now - timedelta(hours=2)
    if other.month != hour.month:
        other = now
    big = {"customer_id": "big", "resource_type": "bytes", "timestamp": hour.isoformat()}
    app = create_app(settings)
    client_redis = aioredis.Redis.from_url(redis.url)
    pool = await asyncpg.create_pool(postgres.url, min_size=1, max_size=2)
    try:
        async with running(app), client_for(app, key) as client:
            full = await client.post(
                "/api/v1/usage/batch", json={"events": [{**big, "quantity": 10**9}] * 1000}
            )
            assert full.json()["accepted"] == 1000
            await Flusher(settings, client_redis, pool).flush_all(lease_wait=0)
            await pool.close()
            postgres.stop()
            await asyncio.sleep(0.3)  # past the key cache TTL: the key is served from cache
            before = await snapshot(client_redis)
            started = time.monotonic()
            moved = {**big, "quantity": 1, "timestamp": other.isoformat()}
            refused = await client.post("/api/v1/usage", json=moved)
            assert refused.status_code == 503, refused.text
            assert time.monotonic() - started < 2.5
            assert await snapshot(client_redis) == before
            # Sent with other customers' events (sharing coalesced calls with some of them,
            # as the pump takes what is queued), it fails alone: they are all counted.
            answers = await asyncio.gather(
                client.post("/api/v1/usage", json=moved),
                *[client.post("/api/v1/usage", json=EVENT) for _ in range(30)],
            )
            assert [a.status_code for a in answers] == [503] + [202] * 30
            postgres.start()
            for _ in range(40):
                response = await client.post("/api/v1/usage", json=moved)
                if response.status_code != 503:
                    break
                await asyncio.sleep(0.25)
            assert response.status_code == 202, response.text
            assert (
                await client.post("/api/v1/usage", json=big | {"quantity": 1})
            ).status_code == 422
    finally:
        await client_redis.aclose()
        await pool.close()


async def test_revoked_key_stops_working_within_the_cache_ttl(
    servers: tuple[RedisServer, PostgresServer],
) -> None:
    redis, postgres = servers
    key = await make_key(postgres.url, "acme", Scope.INGEST)
    app = create_app(settings_for(redis, postgres))
    async with running(app), client_for(app, key) as client:
        assert (await client.post("/api/v1/usage", json=EVENT)).status_code == 202
        conn = await asyncpg.connect(postgres.url)
        await conn.execute("UPDATE api_keys SET revoked_at = now()")
        await conn.close()
        await asyncio.sleep(0.3)
        assert (await client.post("/api/v1/usage", json=EVENT)).status_code == 401


async def test_flusher_killed_every_second_while_postgres_restarts(
    servers: tuple[RedisServer, PostgresServer],
) -> None:
    redis, postgres = servers
    settings = settings_for(redis, postgres)
    await make_key(postgres.url, "acme", Scope.INGEST)
    client = aioredis.Redis.from_url(redis.url)
    truth: Truth = Counter()
    flusher = start_flush(settings)
    started = time.monotonic()
    restarted = False
    kills = 0
    try:
        # Bounded by count and by time, so a loaded machine slows it without failing it.
        while (kills < 5 or not restarted) and time.monotonic() - started < 60:
            await ingest_random(client, truth, events=100)
            await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            if elapsed > kills + 1:
                kill(flusher)
                kills += 1
                flusher = start_flush(settings)
            if not restarted and elapsed > 3:
                postgres.kill(signal.SIGQUIT)  # pg_ctl -m immediate: no checkpoint
                await asyncio.sleep(1.5)
                postgres.start()
                restarted = True
    finally:
        kill(flusher)
    assert restarted
    assert kills >= 5
    done = run_flush(settings, "--once")
    assert done.returncode == 0, done.stderr[-2000:]
    assert await cold_totals(postgres.url) == truth
    assert await leftovers(client) == []
    await client.aclose()


async def test_frozen_postgres_answers_no_connection(
    servers: tuple[RedisServer, PostgresServer],
) -> None:
    # Regression: freeze() stopped only the postmaster's process group, but every backend
    # calls setsid(), so open connections went on answering and "frozen" froze nothing.
    _, postgres = servers
    conn = await asyncpg.connect(postgres.url)
    try:
        postgres.freeze()
        try:
            with pytest.raises(TimeoutError):
                await conn.fetchval("SELECT 1", timeout=1)
        finally:
            postgres.thaw()
    finally:
        conn.terminate()
    again = await asyncpg.connect(postgres.url)
    assert await again.fetchval("SELECT 1") == 1
    await again.close()


# The contract: a 503 for an unavailable dependency is answered within 2 s.
CONTRACT_SECONDS = 2.0


async def _timed(request: Awaitable[httpx.Response]) -> tuple[int, float]:
    started = time.monotonic()
    response = await request
    return response.status_code, time.monotonic() - started


async def test_frozen_postgres_answers_503_within_two_seconds(
    servers: tuple[RedisServer, PostgresServer],
) -> None:
    # A frozen (SIGSTOPped) server accepts connections and answers nothing, unlike a
    # stopped one: every asyncpg wait (connect, statement, cancel request) runs to its
    # time-out, and they used to add up to twice TALLY_DATABASE_TIMEOUT. The timeouts are
    # the defaults: the 2 s must hold as shipped. A long key cache TTL keeps the admin key
    # fresh, so each read's 503 comes from its own query.
    redis, postgres = servers
    settings = Settings.from_env(
        {"REDIS_URL": redis.url, "DATABASE_URL": postgres.url, "TALLY_KEY_CACHE_TTL": "60"}
    )
    admin = await make_key(postgres.url, "acme", Scope.ADMIN)
    uncached = await make_key(postgres.url, "acme", Scope.INGEST)
    hour = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime())
    later = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(time.time() + 7200))
    reads = {
        "bill": "/api/v1/billing/c-1",
        "usage": f"/api/v1/usage/c-1?from={hour}&to={later}",
        "catalog": "/api/v1/customers/c-1",
    }
    app = create_app(settings)
    async with running(app), client_for(app, admin) as client:
        assert (await client.put("/api/v1/customers/c-1", json={})).status_code == 201
        assert (await client.post("/api/v1/usage", json=EVENT)).status_code == 202
        for path in reads.values():  # the pool now holds a connection to the server
            assert (await client.get(path)).status_code == 200
        answers: dict[str, tuple[int, float]] = {}
        postgres.freeze()
        try:
            # One at a time: the first waits on a statement, the next on new connections.
            for name, path in reads.items():
                answers[name] = await _timed(client.get(path))
            answers["ingest, uncached key"] = await _timed(
                client.post(
                    "/api/v1/usage", json=EVENT, headers={"Authorization": f"Bearer {uncached}"}
                )
            )
            answers["ready"] = await _timed(client.get("/ready"))
            # More at once than the pool holds: some wait for a pooled connection.
            burst = await asyncio.gather(
                *(_timed(client.get(reads["bill"])) for _ in range(settings.database_pool_size + 2))
            )
            answers["bill, slowest of a burst"] = max(burst, key=lambda answer: answer[1])
            assert {status for status, _ in burst} == {503}
        finally:
            postgres.thaw()
        print(
            ", ".join(
                f"{name}: {status} in {took:.2f} s" for name, (status, took) in answers.items()
            )
        )
        assert {name: status for name, (status, _) in answers.items()} == dict.fromkeys(
            answers, 503
        )
        slow = {name: took for name, (_, took) in answers.items() if took >= CONTRACT_SECONDS}
        assert not slow, f"503 later than {CONTRACT_SECONDS} s: {slow}"
        # Thawed, every pooled connection works again: the ones cut off mid-query were
        # cleaned up in the background (or are, before they are handed out).
        bills = await asyncio.gather(
            *(client.get(reads["bill"]) for _ in range(settings.database_pool_size + 2))
        )
        assert [bill.status_code for bill in bills] == [200] * len(bills), bills[0].text
        assert {bill.json()["lines"][0]["quantity"] for bill in bills} == {"1"}
