"""`tally serve` runs one flusher per server and flushes on SIGTERM (real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from app.apikeys import Scope
from app.embedded import free_port
from app.settings import Settings
from tests.keys import make_key
from tests.servers import process_env, start_serve

pytestmark = pytest.mark.slow


async def _flushed_total(database_url: str) -> Decimal:
    conn = await asyncpg.connect(database_url)
    try:
        total = await conn.fetchval(
            "SELECT coalesce(sum(quantity), 0) FROM usage_records WHERE tenant = 'served'"
        )
    finally:
        await conn.close()
    return Decimal(total)


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_flushes_and_stops_on_sigterm(
    settings: Settings, redis: aioredis.Redis, database_url: str, workers: int
) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute("TRUNCATE usage_records, usage_monthly, flushes")
    await conn.close()
    key = await make_key(database_url, "served", Scope.INGEST)
    port = free_port()
    env = process_env(
        settings.redis_url, database_url, TALLY_FLUSH_INTERVAL="3600", TALLY_LOG_LEVEL="warning"
    )
    server = start_serve(env, port, "--workers", str(workers))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
            for i in range(30):
                response = await client.post(
                    "/api/v1/usage",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"customer_id": f"c{i % 3}", "resource_type": "r", "quantity": "1.5"},
                )
                assert response.status_code == 202
        # The interval is an hour: only the first (empty) cycle ran, nothing is flushed yet.
        assert await _flushed_total(database_url) == 0
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=40)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err[-3000:]
    assert await _flushed_total(database_url) == Decimal("45")  # the final flush


def _flusher_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"app.worker" in cmdline:
            found.append(int(entry.name))
    return found


def test_serve_restarts_a_dead_flusher(settings: Settings, database_url: str) -> None:
    port = free_port()
    env = process_env(settings.redis_url, database_url, TALLY_LOG_LEVEL="warning")
    server = start_serve(env, port, "--workers", "2")
    try:
        deadline = time.monotonic() + 30
        while not _flusher_children(server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        (first,) = _flusher_children(server.pid)
        os.kill(first, signal.SIGKILL)
        restarted: list[int] = []
        while time.monotonic() < deadline + 30:
            restarted = [p for p in _flusher_children(server.pid) if p != first]
            if restarted:
                break
            time.sleep(0.1)
        assert restarted, "the flusher was not restarted"
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=40)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err[-3000:]
