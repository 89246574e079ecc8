"""What a running API process holds: opened in the lifespan, passed to handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import redis.asyncio as aioredis

from app.auth import KeyCache
from app.coalescer import Coalescer
from app.hotpath.bound import HourSeeder
from app.hotpath.events import Event
from app.hotpath.ingest import IdempotencyConfig, Outcome
from app.ratelimit import RateLimiter
from app.rendered_bills import RenderedBills
from app.scripts import Scripts
from app.settings import Settings
from app.usage_reads import CustomerUsage

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
    # Single events, keyed by tenant.
    coalescer: Coalescer[str, Event, Outcome]
    # Bills' exact reads: customers keyed by (tenant, first hour, end hour) of the month.
    bill_reads: Coalescer[tuple[str, int, int], str, CustomerUsage]
    idempotency: IdempotencyConfig
    seeder: HourSeeder
    # Bills priced and rendered, kept per (stored plan, quantities).
    rendered_bills: RenderedBills = field(default_factory=RenderedBills)
    flusher: FlusherStatus | None = None
    rate_limiter: RateLimiter | None = None
    migrations_current: bool = field(default=False)
    tenant_names: list[str] = field(default_factory=list)
    tenants_fetched_at: float = -1e9
    # The scrape's refresh of tenant_names, left running when a scrape stops waiting.
    tenants_refresh: asyncio.Task[None] | None = None
