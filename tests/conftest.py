"""Fixtures: real Redis and PostgreSQL for integration tests, fakeredis for unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from app import metrics as metrics_module
from app.application import create_app
from app.metrics import use_registry
from app.settings import Settings
from tests.servers import PostgresCluster, start_postgres, start_redis


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder: tests/unit → unit, everything else → integration."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        else:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """A fresh metrics registry for the test (Tally's metrics() records into it)."""
    saved = metrics_module._current, metrics_module._rendered
    fresh = CollectorRegistry()
    use_registry(fresh)
    yield fresh
    metrics_module._current, metrics_module._rendered = saved


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL server with a migrated template database."""
    cluster = start_postgres()
    yield cluster
    if cluster.server is not None:
        cluster.server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the session's Redis server."""
    url, server = start_redis()
    yield url
    if server is not None:
        server.stop()


@pytest.fixture(scope="module")
def database_url(postgres: PostgresCluster) -> Iterator[str]:
    """A fresh, migrated database for each test module."""
    url = asyncio.run(postgres.clone())
    yield url
    asyncio.run(postgres.drop(url))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on an emptied Redis."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    """Settings pointing at the test servers, with a short flush interval."""
    return Settings.from_env(
        {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "TALLY_FLUSH_INTERVAL": "0.05",
            "TALLY_STARTUP_TIMEOUT": "5",
        }
    )


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[Starlette]:
    """Run ``app``'s lifespan around the block.

    The lifespan runs in a task of its own: pytest-asyncio sets a fixture up and tears it
    down in different tasks, and the lifespan's task group must be entered and left in one.
    """
    started, stop = asyncio.Event(), asyncio.Event()
    failure: list[BaseException] = []

    async def lifespan() -> None:
        try:
            async with app.router.lifespan_context(app):
                started.set()
                await stop.wait()
        except BaseException as exc:
            failure.append(exc)
            started.set()
            raise

    task = asyncio.create_task(lifespan())
    await started.wait()
    if failure:
        await asyncio.gather(task, return_exceptions=True)
        raise failure[0]
    try:
        yield app
    finally:
        stop.set()
        await task


@pytest.fixture
async def app(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[Starlette]:
    """The API with its lifespan running (no flusher)."""
    application = create_app(settings)
    async with running(application):
        yield application
