"""Operations routes: liveness, readiness, the OpenAPI document."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from app.api.context import services
from app.hotpath.redis_errors import is_unavailable
from app.metrics import metrics, render
from app.openapi import openapi_document
from app.repo import migrations, tenants
from app.repo.errors import RepoError, translated
from app.responses import JSONResponse
from app.services import Services
from app.worker.lag import measure_lag

log = structlog.get_logger("tally.ops")

TENANT_CACHE_SECONDS = 30.0
TENANT_RETRY_SECONDS = 5.0
TENANT_WAIT_SECONDS = 0.5


async def health(request: Request) -> Response:
    """200 while the process runs; touches no dependency."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return JSONResponse({"status": "healthy", "time": now})


async def _check_redis(svc: Services) -> str | None:
    try:
        with anyio.fail_after(svc.settings.redis_timeout + 0.5):
            await svc.redis.ping()
    except Exception as exc:
        if isinstance(exc, TimeoutError) or is_unavailable(exc):
            return f"redis: {type(exc).__name__}"
        raise
    return None


async def _check_database(svc: Services) -> str | None:
    # Bounded like every route's queries, by the request's database budget
    # (TALLY_DATABASE_TIMEOUT, app.repo.deadline): connecting to a hung server included.
    try:
        async with translated(), svc.pool.acquire() as conn:
            if not svc.migrations_current:
                svc.migrations_current = await migrations.is_current(conn)
            else:
                await conn.fetchval("SELECT 1")
    except RepoError as exc:
        return f"postgresql: {type(exc.__cause__ or exc).__name__}"
    if not svc.migrations_current:
        return "postgresql: migrations are not current (run `tally migrate`)"
    return None


async def ready(request: Request) -> Response:
    """200 when Redis and PostgreSQL answer, migrations are current and no flusher halted."""
    svc = services(request)
    problems: list[str] = []
    results: dict[str, str | None] = {}

    async def run(name: str, check: Any) -> None:
        results[name] = await check(svc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "redis", _check_redis)
        tg.start_soon(run, "postgresql", _check_database)
    problems = [p for p in results.values() if p]
    if svc.flusher is not None and svc.flusher.halted:
        problems.append(f"flusher halted: {svc.flusher.halt_reason}")
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


async def _tenant_names(svc: Services) -> list[str]:
    """The tenants whose lag a scrape measures. Cached: a scrape must not need PostgreSQL
    every time, and keeps working while it is down (with the last known list). With a list
    known, a scrape waits TENANT_WAIT_SECONDS at most for a new one: the refresh goes on
    without it (one at a time), and its late answer is kept."""
    if time.monotonic() - svc.tenants_fetched_at > TENANT_CACHE_SECONDS:
        refresh = svc.tenants_refresh
        if refresh is None or refresh.done():
            refresh = svc.tenants_refresh = asyncio.get_running_loop().create_task(
                _refresh_tenant_names(svc)
            )
        with anyio.move_on_after(TENANT_WAIT_SECONDS if svc.tenant_names else math.inf):
            await asyncio.shield(refresh)
    return svc.tenant_names


async def _refresh_tenant_names(svc: Services) -> None:
    try:  # bounded by the database budget of the request that started it
        names = await tenants.list_tenants(svc.pool)
    except Exception as exc:  # a scrape must not fail; asked again soon
        if not isinstance(exc, RepoError):
            log.error("metrics.tenant_list_failed", error=repr(exc))
        svc.tenants_fetched_at = time.monotonic() - TENANT_CACHE_SECONDS + TENANT_RETRY_SECONDS
        return
    svc.tenant_names = names
    svc.tenants_fetched_at = time.monotonic()


async def _refresh_gauges(svc: Services) -> None:
    m = metrics()
    names = await _tenant_names(svc)  # PostgreSQL's time is not Redis's
    try:
        with anyio.fail_after(svc.settings.redis_timeout + 0.5):
            lag = await measure_lag(svc.redis, names, svc.settings.idempotency_ttl)
            info = await svc.redis.info("memory")
    except Exception as exc:
        if not (isinstance(exc, TimeoutError) or is_unavailable(exc)):
            raise
        m.redis_errors.labels("metrics").inc()
        return
    m.flush_lag.set(lag.flush_lag)
    m.flush_pending_age.set(lag.pending_age)
    m.idempotency_keys.set(lag.idempotency_keys)
    m.redis_memory_used.set(int(info.get("used_memory", 0)))
    m.redis_memory_max.set(int(info.get("maxmemory", 0)))
    if svc.flusher is not None:
        m.flusher_halted.set(1 if svc.flusher.halted else 0)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format (all workers' values in multiprocess mode)."""
    await _refresh_gauges(services(request))
    return Response(render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document of every route."""
    return JSONResponse(openapi_document())
