"""Metrics mean what they say: fresh registries per test, and a real two-worker server."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from app.apikeys import Scope
from app.embedded import free_port
from app.metrics import Metrics
from app.repo.errors import DatabaseUnavailableError
from app.repo.pool import create_pool
from app.settings import Settings
from app.worker.flusher import Flusher
from app.worker.lag import measure_lag
from tests.http import client_for
from tests.integration.flush_helpers import Truth, ingest_random
from tests.keys import make_key
from tests.servers import process_env, start_serve, wait_ready


@pytest.fixture(autouse=True)
async def empty_cold_store(database_url: str, redis: aioredis.Redis) -> None:
    # Redis is emptied per test; the cold store must be too, or the flusher (rightly)
    # sees Redis's flush sequence restart and halts.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE usage_records, usage_monthly, flushes")
    finally:
        await conn.close()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_a_flush_counts_cycles_fields_and_rows(
    registry: CollectorRegistry, settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    await make_key(database_url, "acme", Scope.INGEST)
    truth: Truth = Counter()
    await ingest_random(redis, truth, events=300)
    pool = await create_pool(settings)
    try:
        await Flusher(settings, redis, pool).cycle()
    finally:
        await pool.close()
    assert value(registry, "tally_flush_cycles_total") == 1
    assert value(registry, "tally_flush_fields_total") == len(truth)
    assert value(registry, "tally_flush_rows_total") == len(truth)
    assert value(registry, "tally_flush_cycle_duration_seconds_count") == 1
    assert value(registry, "tally_flush_lag_seconds") == 0


async def test_lag_rises_while_no_flusher_runs_and_falls_after(
    registry: CollectorRegistry, settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    await make_key(database_url, "acme", Scope.INGEST)
    assert (await measure_lag(redis, ["acme"], 86_400)).flush_lag == 0
    await ingest_random(redis, Counter(), events=50)
    await asyncio.sleep(0.3)
    first = (await measure_lag(redis, ["acme"], 86_400)).flush_lag
    await asyncio.sleep(0.5)
    second = (await measure_lag(redis, ["acme"], 86_400)).flush_lag
    assert 0.3 <= first < second
    pool = await create_pool(settings)
    try:
        await Flusher(settings, redis, pool).cycle()
    finally:
        await pool.close()
    assert (await measure_lag(redis, ["acme"], 86_400)).flush_lag == 0
    assert value(registry, "tally_flush_lag_seconds") == 0


async def test_ingest_outcomes_and_request_histogram(
    registry: CollectorRegistry, app: Starlette, database_url: str
) -> None:
    key = await make_key(database_url, "acme", Scope.INGEST)
    event = {"customer_id": "c", "resource_type": "r", "quantity": 1, "idempotency_key": "m"}
    async with client_for(app, key) as client:
        assert (await client.post("/api/v1/usage", json=event)).status_code == 202
        assert (await client.post("/api/v1/usage", json=event)).status_code == 200
        conflict = await client.post("/api/v1/usage", json={**event, "quantity": 2})
        assert conflict.status_code == 422
        assert (
            await client.post("/api/v1/usage", json={**event, "quantity": 0})
        ).status_code == 422
        batch = await client.post(
            "/api/v1/usage/batch",
            json={
                "events": [
                    {"customer_id": "c", "resource_type": "r", "quantity": 1},
                    {"customer_id": "c", "resource_type": "r", "quantity": -1},
                ]
            },
        )
        assert batch.status_code == 202
        scrape = await client.get("/metrics")
    assert value(registry, "tally_ingest_events_total", outcome="accepted") == 2
    assert value(registry, "tally_ingest_events_total", outcome="duplicate") == 1
    assert value(registry, "tally_ingest_events_total", outcome="conflict") == 1
    assert value(registry, "tally_ingest_events_total", outcome="rejected") == 2
    assert (
        value(
            registry,
            "tally_http_request_duration_seconds_count",
            route="/api/v1/usage",
            method="POST",
        )
        == 4
    )
    assert (
        value(
            registry,
            "tally_http_requests_total",
            route="/api/v1/usage",
            method="POST",
            status="422",
        )
        == 2
    )
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    assert "x-request-id" in batch.headers


async def test_request_ids_are_echoed_when_well_formed_and_made_otherwise(app: Starlette) -> None:
    async with client_for(app) as client:
        echoed = await client.get("/health", headers={"X-Request-ID": "trace-42:a.b_c"})
        refused = await client.get("/health", headers={"X-Request-ID": "has spaces"})
        made = [await client.get("/health") for _ in range(2)]
    assert echoed.headers["x-request-id"] == "trace-42:a.b_c"
    ids = [r.headers["x-request-id"] for r in (refused, *made)]
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in ids), ids  # 128 random bits
    assert len(set(ids)) == 3


async def test_lag_keeps_rising_while_postgresql_is_down(
    registry: CollectorRegistry,
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    app: Starlette,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The flusher's cycle fails at its first query, and the scrape's tenant list cannot be
    # refreshed: both must still measure the lag from Redis, not freeze it (or count a
    # Redis error for PostgreSQL's silence).
    await make_key(database_url, "acme", Scope.INGEST)
    pool = await create_pool(settings)
    try:
        flusher = Flusher(settings, redis, pool)
        await flusher.cycle()  # PostgreSQL up: the tenant list is known
        async with client_for(app, "no-key-needed") as client:
            assert (await client.get("/metrics")).status_code == 200
        await ingest_random(redis, Counter(), events=20)

        release = asyncio.Event()

        async def hung(pool: object) -> list[str]:
            await release.wait()
            return ["acme", "late"]

        async def down(pool: object) -> list[str]:
            raise DatabaseUnavailableError("database unavailable (test)")

        # (Each module's own view of the tenants module: they are one module object.)
        monkeypatch.setattr("app.worker.flusher.tenants", SimpleNamespace(list_tenants=down))
        monkeypatch.setattr("app.api.ops.tenants", SimpleNamespace(list_tenants=hung))
        lags = []
        for _ in range(2):
            await asyncio.sleep(0.4)
            with pytest.raises(DatabaseUnavailableError):
                await flusher.cycle()
            lags.append(value(registry, "tally_flush_lag_seconds"))
        assert 0.4 <= lags[0] < lags[1]
        app.state.services.tenants_fetched_at = -1e9  # the scrape's list has expired
        await asyncio.sleep(0.3)
        started = time.monotonic()
        async with client_for(app, "no-key-needed") as client:
            scrape = await client.get("/metrics")
        assert time.monotonic() - started < 1.5
        assert scrape.status_code == 200
        assert value(registry, "tally_flush_lag_seconds") > lags[1]
        assert value(registry, "tally_redis_errors_total", operation="metrics") == 0
        # The scrape stopped waiting, not the refresh: its late answer is kept.
        release.set()
        await asyncio.sleep(0.05)
        assert app.state.services.tenant_names == ["acme", "late"]
    finally:
        await pool.close()


def test_labels_never_carry_ids() -> None:
    fresh = CollectorRegistry()
    Metrics(fresh)
    for family in fresh.collect():
        for sample in family.samples:
            assert set(sample.labels) <= {
                "route",
                "method",
                "status",
                "outcome",
                "operation",
                "reason",
                "kind",
                "version",
                "python",
                "le",
            }


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.slow
def test_two_workers_report_exact_totals(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    key = asyncio.run(make_key(database_url, "acme", Scope.INGEST))
    port = free_port()
    env = process_env(
        settings.redis_url,
        settings.database_url,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
        TALLY_LOG_LEVEL="warning",
    )
    server = start_serve(env, port, "--workers", "2", "--no-flusher")
    try:
        wait_ready(port, "/health", timeout=30)
        n = 60
        for i in range(n):  # a new connection each: the kernel spreads them over workers
            response = httpx.post(
                f"http://127.0.0.1:{port}/api/v1/usage",
                headers={"Authorization": f"Bearer {key}"},
                json={"customer_id": f"c{i}", "resource_type": "r", "quantity": 1},
            )
            assert response.status_code == 202
        scrapes = [_scrape(port) for _ in range(6)]
        for samples in scrapes:
            assert samples[("tally_ingest_events_total", (("outcome", "accepted"),))] == n
            assert (
                samples[
                    (
                        "tally_http_request_duration_seconds_count",
                        (("method", "POST"), ("route", "/api/v1/usage")),
                    )
                ]
                == n
            )
        files = list((tmp_path / "prom").glob("*.db"))
        assert len({f.name.rsplit("_", 1)[-1] for f in files}) >= 2  # both workers wrote
        promtool = shutil.which("promtool")
        if promtool:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").content
            check = subprocess.run(
                [promtool, "check", "metrics"], input=text, capture_output=True, check=False
            )
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_every_name_starts_with_tally_and_outcomes_show_before_traffic(
    settings: Settings, database_url: str, tmp_path: Path, workers: int
) -> None:
    # CONTRACT §2: metric names start with tally_ (prometheus_client's default registry
    # adds process_* and python_*), and the outcome series are there at 0 from the start.
    port = free_port()
    env = process_env(
        settings.redis_url,
        settings.database_url,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
        TALLY_LOG_LEVEL="warning",
    )
    if workers == 1:
        del env["PROMETHEUS_MULTIPROC_DIR"]
    server = start_serve(env, port, "--workers", str(workers), "--no-flusher")
    try:
        wait_ready(port, "/health", timeout=30)
        samples = _scrape(port)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err[-2000:]
    names = {name for name, _ in samples}
    assert names
    assert {name for name in names if not name.startswith("tally_")} == set()
    for outcome in ("accepted", "duplicate", "conflict", "rejected"):
        assert samples[("tally_ingest_events_total", (("outcome", outcome),))] == 0
