"""/ready turns 503 when Redis or PostgreSQL stops, and 200 again when they return."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from app.application import create_app
from app.embedded import PostgresServer, RedisServer
from app.settings import Settings
from tests.conftest import running
from tests.http import client_for
from tests.servers import own_servers, scratch_dir

pytestmark = pytest.mark.slow


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, PostgresServer]]:
    redis, postgres = own_servers(appendonly=False)
    yield redis, postgres
    redis.stop()
    postgres.stop()


async def test_ready_follows_dependencies(servers: tuple[RedisServer, PostgresServer]) -> None:
    redis, postgres = servers
    settings = Settings.from_env(
        {
            "REDIS_URL": redis.url,
            "DATABASE_URL": postgres.url,
            "TALLY_REDIS_TIMEOUT": "0.5",
            "TALLY_DATABASE_TIMEOUT": "1",
        }
    )
    app = create_app(settings)
    async with running(app), client_for(app) as client:
        assert (await client.get("/ready")).status_code == 200

        redis.kill()
        response = await client.get("/ready")
        assert response.status_code == 503
        assert any("redis" in p for p in response.json()["problems"])
        redis.start()
        assert (await client.get("/ready")).status_code == 200

        postgres.stop()
        response = await client.get("/ready")
        assert response.status_code == 503
        assert any("postgresql" in p for p in response.json()["problems"])
        postgres.start()
        for _ in range(20):
            if (await client.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.25)
        assert (await client.get("/ready")).status_code == 200


async def test_not_ready_until_migrated() -> None:
    redis = RedisServer(scratch_dir("tally-ready-redis-"), appendonly=False).start()
    postgres = PostgresServer(scratch_dir("tally-ready-pg-"), durable=False).start()
    try:
        settings = Settings.from_env({"REDIS_URL": redis.url, "DATABASE_URL": postgres.url})
        app = create_app(settings)
        async with running(app), client_for(app) as client:
            response = await client.get("/ready")
            assert response.status_code == 503
            assert any("migrations" in p for p in response.json()["problems"])
    finally:
        redis.stop()
        postgres.stop()
