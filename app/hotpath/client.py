"""The one Redis client of a process, and the start-up checks it must pass."""

from __future__ import annotations

import time

import anyio
import redis.asyncio as aioredis
import structlog
from redis import exceptions as rexc

from app.settings import Settings

log = structlog.get_logger("tally.redis")


class RedisConfigError(RuntimeError):
    """Redis is reachable but configured in a way that would lose usage."""


def create_redis(settings: Settings) -> aioredis.Redis:
    """A client with a bounded connection pool and timeouts on every call.

    ``decode_responses`` stays off: idempotency fields are raw bytes, and the callers decode
    the few strings they need.
    """
    # A blocking pool: when every connection is busy a call waits (up to the timeout)
    # for one instead of failing at once with MaxConnectionsError.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout,
        health_check_interval=0,
        retry_on_timeout=False,
        decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


async def check_redis(client: aioredis.Redis, wait_seconds: float) -> None:
    """Wait (bounded) until Redis answers, then refuse any eviction policy.

    With an eviction policy Redis silently drops keys when memory is full: meters and
    idempotency keys would vanish, losing or double-counting usage. ``noeviction`` makes
    Redis refuse writes instead, which Tally answers with 503 and clients retry.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    while True:
        try:
            info = await client.info("memory")
            break
        except (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise RedisConfigError(f"Redis is not reachable: {exc}") from exc
            log.info("redis.waiting", error=str(exc))
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)
    version = str(info.get("redis_version", "0")) if "redis_version" in info else None
    if version is None:
        server = await client.info("server")
        version = str(server.get("redis_version", "0"))
    if int(version.split(".")[0]) < 7:
        raise RedisConfigError(
            f"Redis {version} is too old: Tally needs Redis ≥ 7.0 "
            "(or Valkey ≥ 7.2) for script flags such as allow-oom"
        )
    policy = info.get("maxmemory_policy")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy != "noeviction":
        raise RedisConfigError(
            f"Redis maxmemory-policy is {policy!r}; Tally needs 'noeviction': any eviction "
            "policy silently deletes meters and idempotency keys under memory pressure, "
            "losing or double-counting usage. Set `maxmemory-policy noeviction`."
        )
