"""Helpers for flusher tests: count events with a known truth, read the cold store."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as aioredis

from app.hotpath.events import Event
from app.hotpath.ingest import IdempotencyConfig, Outcome, apply_events
from app.hotpath.keys import HEARTBEAT, SHARDS, TenantKeys, as_text
from app.scripts import Scripts
from app.settings import Settings

Truth = Counter[tuple[str, str, str, datetime]]
CONFIG = IdempotencyConfig(ttl=86_400, fanout=1024)
HOUR_NS = 3_600_000_000_000


async def ingest_random(
    redis: aioredis.Redis,
    truth: Truth,
    *,
    tenant: str = "acme",
    events: int = 200,
    customers: int = 20,
    rng: random.Random | None = None,
) -> None:
    """Count ``events`` random events and add the accepted ones to ``truth``."""
    rng = rng or random.Random(7)
    scripts = Scripts.register(redis)
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    batch: list[Event] = []
    for _ in range(events):
        hour = now - timedelta(hours=rng.randrange(3))
        ts = int(hour.timestamp()) * 1_000_000_000
        batch.append(
            Event(
                customer_id=f"cust:{rng.randrange(customers)}",
                resource_type=rng.choice(["api_call", "gb", "sms"]),
                micro=rng.randrange(1, 5_000_000),
                timestamp_ns=ts,
                timestamp_given=True,
                idempotency_key=None,
            )
        )
    outcomes = await apply_events(scripts, tenant, batch, CONFIG)
    for event, outcome in zip(batch, outcomes, strict=True):
        if outcome is Outcome.ACCEPTED:
            bucket = datetime.fromtimestamp(event.timestamp_ns // HOUR_NS * 3600, tz=UTC)
            truth[(tenant, event.customer_id, event.resource_type, bucket)] += event.micro


async def cold_totals(database_url: str) -> Truth:
    """sum(quantity) per (tenant, customer, resource, hour) in usage_records, in micro."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT tenant, customer_id, resource_type, bucket_start, sum(quantity) AS q
               FROM usage_records GROUP BY 1, 2, 3, 4"""
        )
    finally:
        await conn.close()
    return Counter(
        {
            (r["tenant"], r["customer_id"], r["resource_type"], r["bucket_start"]): int(
                r["q"] * 1_000_000
            )
            for r in rows
        }
    )


async def leftovers(redis: aioredis.Redis, tenant: str = "acme") -> list[str]:
    """Hot or pending keys still in Redis for ``tenant``."""
    keys = TenantKeys(tenant)
    found = [as_text(k) for k in await redis.keys(keys.prefix + "hot:*")]
    found += [as_text(k) for k in await redis.keys(keys.prefix + "pend:*")]
    for shard in range(SHARDS):
        if await redis.exists(keys.meta(shard)):
            found.append(keys.meta(shard))
    return found


def flusher_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a flusher subprocess pointing at the test servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "TALLY_FLUSH_INTERVAL": "0.05",
            "TALLY_LOG_LEVEL": "warning",
            "TALLY_STARTUP_TIMEOUT": "10",
        }
    )
    env.update(extra)
    return env


def run_flush(
    settings: Settings, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m app.worker ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "app.worker", *args],
        env=flusher_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def first_cycle_done(redis: aioredis.Redis) -> None:
    """Wait for a flusher's heartbeat, written after its first (empty) cycle: its signal
    handling is set up by then, and with a long interval no cycle comes soon."""
    for _ in range(300):  # 30 s
        if await redis.exists(HEARTBEAT):
            return
        await asyncio.sleep(0.1)
    assert await redis.exists(HEARTBEAT), "no flusher heartbeat"


def kill(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> tuple[str, str]:
    """Signal ``proc``, wait for it, and return its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return out, err


def start_flush(settings: Settings, *args: str, **env: str) -> subprocess.Popen[str]:
    """Start ``python -m app.worker ARGS`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "app.worker", *args],
        env=flusher_env(settings, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
