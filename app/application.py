"""The Starlette application factory and the lifespan that owns every resource."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import anyio
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from app.api import billing, catalog, ops, usage
from app.api.middleware import (
    DatabaseBudgetMiddleware,
    EncodedSlashMiddleware,
    ObservabilityMiddleware,
)
from app.auth import KeyCache
from app.coalescer import Coalescer
from app.errors import EXCEPTION_HANDLERS
from app.heap import freeze_startup_heap
from app.hotpath.bound import HourSeeder
from app.hotpath.client import check_redis, create_redis
from app.hotpath.events import Event
from app.hotpath.ingest import IdempotencyConfig, Outcome, apply_each
from app.ratelimit import RateLimiter
from app.repo import tenants
from app.repo.deadline import database_budget
from app.repo.errors import DatabaseUnavailableError
from app.repo.pool import create_pool
from app.scripts import Scripts
from app.services import Services
from app.settings import Settings
from app.usage_reads import CustomerUsage, read_usages
from app.workers import heartbeat

log = structlog.get_logger("tally.app")
# Bills sharing one read: at most this many customers per statement, and this many reads
# at once per process (bench/bill.py measured 1, 2 and 4: docs/benchmarks.md §9).
BILL_BATCH = 64
BILL_READS_IN_FLIGHT = 2


def routes() -> list[BaseRoute]:
    """Every route of the API, the busiest first: a request is matched against each in turn."""
    return [
        Route("/api/v1/usage", usage.ingest_one, methods=["POST"]),
        Route("/api/v1/usage/batch", usage.ingest_batch, methods=["POST"]),
        Route("/api/v1/billing/{customer_id}", billing.get_bill, methods=["GET"]),
        Route("/api/v1/usage/{customer_id}", billing.get_usage, methods=["GET"]),
        Route("/health", ops.health, methods=["GET"]),
        Route("/ready", ops.ready, methods=["GET"]),
        Route("/metrics", ops.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", ops.openapi, methods=["GET"]),
        Route("/api/v1/customers", catalog.list_customers, methods=["GET"]),
        Route("/api/v1/customers/{customer_id}", catalog.customer, methods=["GET", "PUT"]),
        Route("/api/v1/plans", catalog.list_plans, methods=["GET"]),
        Route("/api/v1/plans/{plan_id}", catalog.plan, methods=["GET", "PUT"]),
    ]


def create_app(
    settings: Settings, *, run_flusher: bool = False, heartbeat_fd: int | None = None
) -> Starlette:
    """Build the ASGI app. Resources open in the lifespan, never at import or here.

    ``heartbeat_fd``: a pipe to write the worker's heartbeat to (:mod:`app.workers`).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = create_redis(settings)
        try:
            await check_redis(redis, settings.startup_timeout)
            pool = await create_pool(settings)
        except BaseException:
            await redis.aclose()
            raise
        scripts = Scripts.register(redis)
        idempotency = IdempotencyConfig(settings.idempotency_ttl, settings.idempotency_fanout)

        async def apply(tenant: str, events: Sequence[Event]) -> list[Outcome | Exception]:
            return await apply_each(scripts, tenant, events, idempotency)

        async def read_bills(
            month: tuple[str, int, int], customers: Sequence[str]
        ) -> list[CustomerUsage | DatabaseUnavailableError]:
            tenant, first_hour, end_hour = month
            # The pump's task has no request budget of its own: the shared read gets one.
            with database_budget(settings.database_timeout):
                return await read_usages(
                    scripts, pool, tenant, customers, first_hour, end_hour, monthly=True
                )

        async def lookup(key_id: str) -> tenants.KeyRecord | None:
            return await tenants.find_key(pool, key_id)

        svc = Services(
            settings=settings,
            redis=redis,
            pool=pool,
            scripts=scripts,
            keys=KeyCache(lookup, settings.key_cache_ttl, settings.database_timeout),
            coalescer=Coalescer(apply),
            bill_reads=Coalescer(
                read_bills, max_batch=BILL_BATCH, max_in_flight=BILL_READS_IN_FLIGHT
            ),
            seeder=HourSeeder(redis, scripts, pool),
            idempotency=idempotency,
            rate_limiter=None
            if settings.rate_limit is None
            else RateLimiter.per_process(settings.rate_limit, settings.workers),
        )
        app.state.services = svc
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(svc.coalescer.run)
                tg.start_soon(svc.bill_reads.run)
                if heartbeat_fd is not None:
                    tg.start_soon(heartbeat, heartbeat_fd)
                if run_flusher:
                    from app.worker.flusher import Flusher

                    flusher = Flusher(settings, redis, pool)
                    svc.flusher = flusher.status
                    await tg.start(flusher.run_until_stopped)
                freeze_startup_heap()
                log.info("app.started", flusher=run_flusher)
                try:
                    yield
                finally:
                    if run_flusher:
                        await flusher.stop()
                    tg.cancel_scope.cancel()
        finally:
            await svc.keys.close()
            await pool.close()
            await redis.aclose()
            log.info("app.stopped")

    table = routes()
    templates = {route.endpoint: route.path for route in table if isinstance(route, Route)}
    app = Starlette(
        routes=table,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
        middleware=[
            Middleware(EncodedSlashMiddleware),
            Middleware(
                ObservabilityMiddleware, templates=templates, access_log=settings.access_log
            ),
            Middleware(DatabaseBudgetMiddleware, seconds=settings.database_timeout),
        ],
    )
    # A trailing slash is a 404 with a JSON body, not an empty 307 to another resource.
    app.router.redirect_slashes = False
    return app
