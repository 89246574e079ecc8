"""The flusher against real Redis, real PostgreSQL and real processes."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from app.apikeys import Scope
from app.embedded import free_port
from app.hotpath.events import Event
from app.hotpath.ingest import IdempotencyConfig, apply_events
from app.hotpath.keys import HEARTBEAT, shard_of
from app.quantities import from_micro
from app.repo.errors import DatabaseUnavailableError
from app.repo.pool import create_pool
from app.repo.usage import rollup
from app.scripts import Scripts
from app.settings import Settings
from app.timestamps import Period
from app.usage_reads import read_customer_usage
from app.worker import flusher as flusher_module
from app.worker.faults import POINTS
from app.worker.flusher import Flusher
from tests.integration.flush_helpers import (
    Truth,
    cold_totals,
    first_cycle_done,
    ingest_random,
    kill,
    leftovers,
    run_flush,
    start_flush,
)
from tests.keys import make_key
from tests.servers import PostgresCluster


@pytest.fixture
async def tenant(database_url: str, redis: aioredis.Redis) -> str:
    await make_key(database_url, "acme", Scope.INGEST)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE usage_records, usage_monthly, flushes")
    finally:
        await conn.close()
    return "acme"


async def test_cycle_moves_everything_exactly(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    truth: Truth = Counter()
    await ingest_random(redis, truth, events=500)
    pool = await create_pool(settings)
    try:
        flusher = Flusher(settings, redis, pool)
        results = await flusher.cycle()
        assert sum(r.fields for r in results) == len(truth)
        assert await cold_totals(settings.database_url) == truth
        assert await leftovers(redis) == []
        assert await redis.exists(HEARTBEAT)
        # Nothing left: a second cycle commits nothing.
        again = await flusher.cycle()
        assert sum(r.fields for r in again) == 0
        await ingest_random(redis, truth, events=100, rng=random.Random(99))
        await flusher.cycle()
        assert await cold_totals(settings.database_url) == truth
    finally:
        await pool.close()


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
async def test_crash_at_each_point_then_restart_is_exact(
    settings: Settings, redis: aioredis.Redis, tenant: str, point: str
) -> None:
    truth: Truth = Counter()
    rng = random.Random(point)
    for round_ in range(2):
        await ingest_random(redis, truth, events=150, rng=rng)
        crashed = run_flush(settings, "--once", TALLY_FAULT_CRASH_AT=f"{point}:{round_ + 1}")
        assert crashed.returncode == 137, crashed.stderr[-2000:]
        # More usage arrives while the flusher is down.
        await ingest_random(redis, truth, events=50, rng=rng)
    recovered = run_flush(settings, "--once")
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    assert await cold_totals(settings.database_url) == truth
    assert await leftovers(redis) == []


@pytest.mark.slow
async def test_sigkilled_every_second_under_load_is_exact(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    truth: Truth = Counter()
    rng = random.Random(3)
    started = time.monotonic()
    proc = start_flush(settings)
    kills = 0
    try:
        # Bounded by count and by time, so a loaded machine slows it without failing it.
        while kills < 5 and time.monotonic() - started < 60:
            await ingest_random(redis, truth, events=100, rng=rng)
            await asyncio.sleep(0.05)
            if time.monotonic() - started > kills + 1:
                kill(proc)
                kills += 1
                proc = start_flush(settings)
    finally:
        kill(proc)
    assert kills == 5
    done = run_flush(settings, "--once")
    assert done.returncode == 0, done.stderr[-2000:]
    assert await cold_totals(settings.database_url) == truth
    assert await leftovers(redis) == []


@pytest.mark.slow
async def test_four_flushers_at_once_are_exact(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    truth: Truth = Counter()
    rng = random.Random(4)
    procs = [start_flush(settings) for _ in range(4)]
    try:
        for _ in range(40):
            await ingest_random(redis, truth, events=100, rng=rng)
            await asyncio.sleep(0.05)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=30) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    done = run_flush(settings, "--once")
    assert done.returncode == 0
    assert await cold_totals(settings.database_url) == truth
    assert await leftovers(redis) == []


@pytest.mark.slow
async def test_sigterm_flushes_hot_data_and_exits_zero(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    truth: Truth = Counter()
    proc = start_flush(settings, "--interval", "3600")
    try:
        await first_cycle_done(redis)  # the next cycle is an hour away
        await ingest_random(redis, truth, events=300)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert time.monotonic() - started < 10  # within the default grace period
    assert await cold_totals(settings.database_url) == truth
    assert await leftovers(redis) == []


@pytest.mark.slow
async def test_a_repeated_sigterm_still_flushes_but_sigint_after_it_cancels(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    # Two SIGTERMs back to back (what PDEATHSIG can deliver when `tally serve` is killed)
    # are one request to stop: the final flush completes. SIGINT after SIGTERM is the
    # operator insisting: the flush is cancelled (nothing lost: the data stays in Redis).
    for second, cancelled in ((signal.SIGTERM, False), (signal.SIGINT, True)):
        await redis.delete(HEARTBEAT)
        truth: Truth = Counter()
        before = await cold_totals(settings.database_url)
        # The final flush pauses 0.5 s after each drain: the second signal, 0.2 s after
        # the first (two pending ones would merge into one), lands while it runs.
        proc = start_flush(settings, "--interval", "3600", TALLY_FAULT_PAUSE_AT="after_drain:0.5")
        try:
            await first_cycle_done(redis)
            await ingest_random(redis, truth, events=300)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            proc.send_signal(second)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert ("flusher.cancelled" in err) is cancelled, err[-2000:]
        if not cancelled:
            assert proc.returncode == 0, err[-2000:]
            assert await leftovers(redis) == []
        assert run_flush(settings, "--once").returncode == 0  # whatever was left
        assert await cold_totals(settings.database_url) - before == truth


@pytest.mark.slow
async def test_wiped_redis_halts_the_flusher(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    truth: Truth = Counter()
    for i in range(3):
        await ingest_random(redis, truth, events=100, rng=random.Random(i))
        assert run_flush(settings, "--once").returncode == 0
    assert await cold_totals(settings.database_url) == truth
    await redis.flushall()
    await ingest_random(redis, Counter(), events=100, rng=random.Random(0))
    halted = run_flush(settings, "--once")
    assert halted.returncode == 3
    assert "Redis lost its flush state" in halted.stderr or "went back in time" in halted.stderr
    # Nothing was double counted.
    assert await cold_totals(settings.database_url) == truth


async def test_check_reports_the_heartbeat(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    assert run_flush(settings, "--check").returncode == 1
    assert run_flush(settings, "--once").returncode == 0
    assert run_flush(settings, "--check").returncode == 0


def _redis_url_with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts._replace(query=f"db={db}").geturl()
    return parts._replace(path=f"/{db}").geturl()


@pytest.mark.parametrize(
    ("url_of", "reason"),
    [
        # Nothing listens on port 1 of the loopback.
        (lambda _: "redis://127.0.0.1:1/0", "redis unavailable: "),
        # redis-py refuses the URL itself.
        (lambda _: "redis://127.0.0.1:99999/0", "ValueError: "),
        # A real server that answers with an error.
        (lambda url: _redis_url_with_db(url, 99), "ResponseError: DB index"),
    ],
    ids=["refused", "port-out-of-range", "db-out-of-range"],
)
async def test_check_says_in_one_line_why_it_cannot_ask_redis(
    settings: Settings, url_of: Callable[[str], str], reason: str
) -> None:
    down = dataclasses.replace(settings, redis_url=url_of(settings.redis_url))
    checked = run_flush(down, "--check")
    assert checked.returncode == 1
    assert checked.stdout == ""
    assert checked.stderr.startswith(f"tally flush: cannot check the heartbeat: {reason}")
    assert "Traceback" not in checked.stderr
    assert len(checked.stderr.strip().splitlines()) == 1


@pytest.mark.slow
async def test_standalone_flusher_serves_its_metrics(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    port = free_port()
    proc = start_flush(settings, "--metrics-port", str(port))
    try:
        await ingest_random(redis, Counter(), events=50)
        text = ""
        for _ in range(100):
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
                if (
                    "tally_flush_fields_total 0.0" not in text
                    and "tally_flush_fields_total" in text
                ):
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        assert "tally_flush_cycles_total" in text
        assert "tally_flush_lag_seconds" in text
        fields = [line for line in text.splitlines() if line.startswith("tally_flush_fields_total")]
        assert fields
        assert float(fields[0].split()[1]) > 0
    finally:
        kill(proc, signal.SIGTERM)


async def test_a_flush_larger_than_the_timeout_allows_still_commits(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    """A flush that piled up (PostgreSQL was down, a burst of new customers) takes longer
    to copy than the statement time-out: its copy gets time per row, or it would fail on
    every retry and never flush."""
    settings = dataclasses.replace(settings, database_timeout=0.2)
    scripts = Scripts.register(redis)
    now = time.time_ns()
    customers = [f"c{i}" for i in range(160_000) if shard_of(f"c{i}") == 0]
    events = [Event(c, r, 1, now, False, None) for c in customers for r in ("api", "gb")]
    assert len(events) >= 40_000  # at 100k rows/s: 0.4 s of copying, twice the time-out
    for i in range(0, len(events), 1000):
        await apply_events(scripts, tenant, events[i : i + 1000], IdempotencyConfig(86_400, 64))
    pool = await create_pool(settings)
    try:
        results = await Flusher(settings, redis, pool).cycle()
        assert [r.fields for r in results if r.fields] == [len(events)]
        assert sum((await cold_totals(settings.database_url)).values()) == len(events)
        assert await leftovers(redis) == []
    finally:
        await pool.close()


async def test_roll_up_runs_when_due_and_a_failed_one_waits_an_interval(
    settings: Settings,
    redis: aioredis.Redis,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
    registry: CollectorRegistry,
) -> None:
    """A roll-up that fails (say, times out on a huge backlog) is not a failed flush and is
    not retried every cycle; one that folded something runs again next cycle; --once and
    the final flush never roll up."""
    interval = 2.0
    settings = dataclasses.replace(settings, rollup_interval=interval)
    outcomes: list[int | Exception] = [DatabaseUnavailableError("statement timed out"), 3, 0]
    calls: list[float] = []

    async def scripted_rollup(pool: asyncpg.Pool, older_than: float, **_: float) -> int:
        calls.append(older_than)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(flusher_module, "rollup", scripted_rollup)
    truth: Truth = Counter()
    await ingest_random(redis, truth, events=200)
    pool = await create_pool(settings)
    try:
        flusher = Flusher(settings, redis, pool)
        await flusher.flush_all(lease_wait=1.0)
        assert calls == []  # draining only
        assert await cold_totals(settings.database_url) == truth

        started = time.monotonic()
        await flusher.cycle()  # due at start: the roll-up fails, the cycle does not
        failed = registry.get_sample_value("tally_flush_failures_total", {"reason": "rollup"})
        assert failed == 1.0
        await flusher.cycle()
        assert len(calls) == 1 or time.monotonic() - started >= interval  # not retried yet

        await asyncio.sleep(max(0.0, started + interval - time.monotonic()) + 0.1)
        await flusher.cycle()  # due again: folds 3 flushes
        await flusher.cycle()  # found work: straight away again (finds none)
        await flusher.cycle()  # idle: waits an interval
        assert calls == [settings.rollup_age] * 3
        assert outcomes == []
    finally:
        await pool.close()


@pytest.fixture
async def kolkata_db(postgres: PostgresCluster) -> AsyncIterator[str]:
    """A migrated database whose default TimeZone is Asia/Kolkata (+05:30), where a UTC
    hour start is half past a local hour."""
    url = await postgres.clone()
    conn = await asyncpg.connect(url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = 'Asia/Kolkata'")
    finally:
        await conn.close()
    yield url
    await postgres.drop(url)


async def test_flushes_and_bills_when_the_database_defaults_to_kolkata(
    settings: Settings, redis: aioredis.Redis, kolkata_db: str
) -> None:
    """Whatever the server's or role's default TimeZone, Tally's sessions are in UTC: flushes
    commit and bills read back exactly what was counted, before and after the roll-up."""
    settings = dataclasses.replace(settings, database_url=kolkata_db)
    await make_key(kolkata_db, "acme", Scope.INGEST)
    truth: Truth = Counter()
    await ingest_random(redis, truth, events=300, customers=3)
    conn = await asyncpg.connect(kolkata_db)
    try:
        assert await conn.fetchval("SHOW TimeZone") == "Asia/Kolkata"
    finally:
        await conn.close()
    scripts = Scripts.register(redis)
    pool = await create_pool(settings)
    try:
        assert await pool.fetchval("SHOW TimeZone") == "UTC"
        results = await Flusher(settings, redis, pool).cycle()
        assert sum(r.fields for r in results) == len(truth)
        assert await cold_totals(kolkata_db) == truth
        assert await leftovers(redis) == []
        hours: dict[str, dict[tuple[str, int], Decimal]] = {}
        bills: dict[tuple[str, Period], dict[str, Decimal]] = {}
        for (_, customer, resource, bucket), micro in truth.items():
            hour = int(bucket.timestamp()) // 3600
            hours.setdefault(customer, {})[(resource, hour)] = from_micro(micro)
            bill = bills.setdefault((customer, Period.containing(bucket)), {})
            bill[resource] = bill.get(resource, Decimal(0)) + from_micro(micro)
        first = min(hour for buckets in hours.values() for _, hour in buckets)
        last = max(hour for buckets in hours.values() for _, hour in buckets)
        for stage in ("flushed", "rolled up"):
            if stage == "rolled up":
                assert await rollup(pool, older_than=0, statement_timeout=10.0) > 0
            for customer, expected in hours.items():
                usage = await read_customer_usage(scripts, pool, "acme", customer, first, last + 1)
                assert usage.buckets == expected, (stage, customer)
            for (customer, period), expected_bill in bills.items():
                usage = await read_customer_usage(
                    scripts,
                    pool,
                    "acme",
                    customer,
                    period.first_hour,
                    period.end_hour,
                    monthly=True,
                )
                assert usage.per_resource() == expected_bill, (stage, customer, period)
    finally:
        await pool.close()


async def test_a_roll_up_error_of_any_kind_is_not_a_failed_cycle(
    settings: Settings,
    redis: aioredis.Redis,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
    registry: CollectorRegistry,
) -> None:
    """E.g. a flusher started before `tally migrate` (no usage_monthly yet), or migration
    0004's guard refusing an old roll-up: the flush has committed either way."""

    async def broken_rollup(pool: asyncpg.Pool, older_than: float, **_: float) -> int:
        raise asyncpg.UndefinedTableError('relation "usage_monthly" does not exist')

    monkeypatch.setattr(flusher_module, "rollup", broken_rollup)
    truth: Truth = Counter()
    await ingest_random(redis, truth, events=100)
    pool = await create_pool(settings)
    try:
        await Flusher(settings, redis, pool).cycle()
        assert await cold_totals(settings.database_url) == truth
        labels = {"reason": "rollup"}
        assert registry.get_sample_value("tally_flush_failures_total", labels) == 1.0
    finally:
        await pool.close()


async def test_once_drains_then_rolls_up_old_flushes(
    settings: Settings, redis: aioredis.Redis, tenant: str
) -> None:
    """A deployment that only runs `tally flush --once` (from cron) rolls up too."""
    truth: Truth = Counter()
    await ingest_random(redis, truth, events=200)
    assert run_flush(settings, "--once").returncode == 0
    conn = await asyncpg.connect(settings.database_url)
    try:
        # The first run's flushes are old enough now; the second run drains new usage.
        await conn.execute("UPDATE flushes SET committed_at = now() - interval '2 hours'")
        old = await conn.fetchval("SELECT count(*) FROM flushes")
        await ingest_random(redis, truth, events=50, rng=random.Random(3))
        done = run_flush(settings, "--once")
        assert done.returncode == 0, done.stderr[-2000:]
        assert await conn.fetchval("SELECT count(*) FROM flushes WHERE rolled_up") == old
        assert await conn.fetchval("SELECT count(*) FROM flushes WHERE NOT rolled_up") > 0
        assert await cold_totals(settings.database_url) == truth
        assert await leftovers(redis) == []
    finally:
        await conn.close()
