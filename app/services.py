"""What a running API process holds: opened in the lifespan, passed to handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import redis.asyncio as aioredis

from app.auth import KeyCache
from app.hotpath.bound import HourSeeder
from app.hotpath.coalescer import Coalescer
from app.hotpath.ingest import IdempotencyConfig
from app.ratelimit import RateLimiter
from app.scripts import Scripts
from app.settings import Settings

if TYPE_CHECKING:
    from app.worker.status import FlusherStatus


@dataclass
class Services:
    """The process's resources. One Redis client and one pool, never one per request."""

    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool
    scripts: Scripts
    keys: KeyCache
    coalescer: Coalescer
    idempotency: IdempotencyConfig
    seeder: HourSeeder
    flusher: FlusherStatus | None = None
    rate_limiter: RateLimiter | None = None
    migrations_current: bool = field(default=False)
    tenant_names: list[str] = field(default_factory=list)
    tenants_fetched_at: float = -1e9
    # The scrape's refresh of tenant_names, left running when a scrape stops waiting.
    tenants_refresh: asyncio.Task[None] | None = None
