"""Operations routes: liveness, readiness, the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from app.hotpath.redis_errors import is_unavailable
from app.openapi import openapi_document
from app.repo import migrations
from app.repo.errors import translate
from app.responses import JSONResponse
from app.services import Services


def services(request: Request) -> Services:
    """The process's :class:`Services` (set by the lifespan)."""
    found: Services = request.app.state.services
    return found


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
    try:
        with anyio.fail_after(svc.settings.database_timeout + 0.5):
            async with svc.pool.acquire() as conn:
                if not svc.migrations_current:
                    svc.migrations_current = await migrations.is_current(conn)
                else:
                    await conn.fetchval("SELECT 1")
    except Exception as exc:
        if isinstance(exc, TimeoutError) or translate(exc) is not None:
            return f"postgresql: {type(exc).__name__}"
        raise
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


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document of every route."""
    return JSONResponse(openapi_document())
