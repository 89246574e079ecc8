"""A stateful model test: random ingest, retries, crashes at each flush step, roll-ups and
Redis restarts, with the exact usage and bill reads checked against a model after every
step.

Real Redis (AOF, appendfsync always, restarted by SIGKILL) and real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from app import apikeys
from app.apikeys import Scope
from app.embedded import RedisServer
from app.hotpath.events import Event
from app.hotpath.ingest import IdempotencyConfig, Outcome, apply_events
from app.hotpath.keys import SHARDS, TenantKeys
from app.repo import tenants
from app.repo.pool import create_pool
from app.repo.usage import commit_flush, rollup
from app.scripts import Scripts
from app.settings import Settings
from app.timestamps import Period, hour_of
from app.usage_reads import read_customer_usage
from app.worker.flusher import Flusher
from app.worker.pending import Drained, read_pending
from tests.servers import PostgresCluster, scratch_dir

pytestmark = pytest.mark.slow

CUSTOMERS = ["a", "a:b", "B", "x@y.z"]
RESOURCES = ["api", "gb"]
CONFIG = IdempotencyConfig(ttl=86_400, fanout=64)
TENANT = "model"
NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
HOURS = [NOW - timedelta(hours=h) for h in range(3)]
FIRST_HOUR = hour_of(int((NOW - timedelta(days=2)).timestamp()) * 10**9)
END_HOUR = FIRST_HOUR + 24 * 4
MONTHS = sorted({Period.containing(h) for h in HOURS}, key=lambda p: p.start)

TIMEOUT = 10.0  # statement time-outs of commits and roll-ups
quantities = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(1000), places=6)


class TallyModel(RuleBasedStateMachine):
    """The system under test next to a dictionary of what must be counted."""

    redis_server: RedisServer
    cluster: PostgresCluster

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.truth: Counter[tuple[str, str]] = Counter()
        self.keyed: dict[str, Event] = {}
        self.counter = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize()
    def start(self) -> None:
        self.database_url = self.run(self.cluster.clone())
        self.settings = Settings.from_env(
            {"REDIS_URL": self.redis_server.url, "DATABASE_URL": self.database_url}
        )
        self.run(self._open())

    async def _open(self) -> None:
        self.redis = aioredis.Redis.from_url(self.redis_server.url)
        await self.redis.flushall()
        self.pool = await create_pool(self.settings)
        conn = await asyncpg.connect(self.database_url)
        await tenants.create_key(conn, TENANT, Scope.ADMIN, apikeys.generate())
        await conn.close()
        self.scripts = Scripts.register(self.redis)
        self.flusher = Flusher(self.settings, self.redis, self.pool)

    def teardown(self) -> None:
        async def close() -> None:
            await self.pool.close()
            await self.redis.aclose()
            await self.cluster.drop(self.database_url)

        if hasattr(self, "pool"):
            self.run(close())
        self.loop.close()

    def _event(
        self, customer: str, resource: str, quantity: Decimal, hour: int, key: str | None
    ) -> Event:
        ts = int(HOURS[hour].timestamp()) * 10**9
        return Event(
            customer_id=customer,
            resource_type=resource,
            micro=int(quantity * 10**6),
            timestamp_ns=ts,
            timestamp_given=True,
            idempotency_key=key,
        )

    def _apply(self, events: list[Event]) -> list[Outcome]:
        outcomes: list[Outcome] = self.run(apply_events(self.scripts, TENANT, events, CONFIG))
        return outcomes

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        resource=st.sampled_from(RESOURCES),
        quantity=quantities,
        hour=st.integers(0, 2),
        keyed=st.booleans(),
    )
    def ingest(
        self, customer: str, resource: str, quantity: Decimal, hour: int, keyed: bool
    ) -> None:
        self.counter += 1
        key = f"k{self.counter}" if keyed else None
        event = self._event(customer, resource, quantity, hour, key)
        assert self._apply([event]) == [Outcome.ACCEPTED]
        self.truth[(customer, resource)] += event.micro
        if key:
            self.keyed[key] = event

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        if not self.keyed:
            return
        key = data.draw(st.sampled_from(sorted(self.keyed)))
        assert self._apply([self.keyed[key]]) == [Outcome.DUPLICATE]

    @rule(data=st.data(), quantity=quantities)
    def conflicting_retry(self, data: st.DataObject, quantity: Decimal) -> None:
        if not self.keyed:
            return
        key = data.draw(st.sampled_from(sorted(self.keyed)))
        original = self.keyed[key]
        changed = Event(
            original.customer_id,
            original.resource_type,
            int(quantity * 10**6),
            original.timestamp_ns,
            True,
            key,
        )
        expected = Outcome.DUPLICATE if changed.micro == original.micro else Outcome.CONFLICT
        assert self._apply([changed]) == [expected]

    @rule(shard=st.integers(0, SHARDS - 1))
    def crash_after_drain(self, shard: int) -> None:
        keys = TenantKeys(TENANT)
        self.run(
            self.scripts.drain(
                keys=[
                    keys.dirty(shard),
                    keys.pending_customers(shard),
                    keys.meta(shard),
                    keys.seq(shard),
                    keys.first(shard),
                ],
                args=[keys.hot_prefix, keys.pending_prefix, f"crash-{self.counter}", 0],
            )
        )

    @rule(shard=st.integers(0, SHARDS - 1))
    def crash_after_commit(self, shard: int) -> None:
        self.crash_after_drain(shard)

        async def commit() -> None:
            keys = TenantKeys(TENANT)
            meta = await self.redis.hmget(
                keys.meta(shard), ["seq", "flush_id", "fields", "drained_ms", "oldest_ms"]
            )
            if meta[0] is None:
                return
            drained = Drained.from_reply([bytes(v) for v in meta if isinstance(v, bytes)] + [b"1"])
            assert drained is not None
            rows, _ = await read_pending(self.redis, keys, shard)
            await commit_flush(
                self.pool,
                TENANT,
                shard,
                drained.seq,
                drained.flush_id,
                drained.drained_at,
                rows,
                statement_timeout=TIMEOUT,
            )

        self.run(commit())

    @rule()
    def flush(self) -> None:
        self.run(self.flusher.cycle())

    @rule()
    def roll_up(self) -> None:
        # Age 0: nothing reads concurrently here, so every committed flush may fold.
        self.run(rollup(self.pool, older_than=0, statement_timeout=TIMEOUT))

    @rule()
    def restart_redis(self) -> None:
        self.run(self.redis.aclose())
        self.redis_server.kill()
        self.redis_server.start()
        self.redis = aioredis.Redis.from_url(self.redis_server.url)
        self.scripts = Scripts.register(self.redis)
        self.flusher = Flusher(self.settings, self.redis, self.pool)

    @invariant()
    def bills_match_the_model(self) -> None:
        if not hasattr(self, "scripts"):
            return
        for customer in CUSTOMERS:
            usage = self.run(
                read_customer_usage(self.scripts, self.pool, TENANT, customer, FIRST_HOUR, END_HOUR)
            )
            got = {r: q for r, q in usage.per_resource().items()}
            want = {
                r: Decimal(self.truth[(customer, r)]).scaleb(-6)
                for r in RESOURCES
                if self.truth[(customer, r)]
            }
            assert got == want, (customer, got, want)
            # The bill's read: monthly totals plus unrolled flushes, month by month.
            billed: Counter[str] = Counter()
            for month in MONTHS:
                bill = self.run(
                    read_customer_usage(
                        self.scripts,
                        self.pool,
                        TENANT,
                        customer,
                        month.first_hour,
                        month.end_hour,
                        monthly=True,
                    )
                )
                billed.update(bill.per_resource())
            assert dict(billed) == want, (customer, dict(billed), want)


@pytest.fixture(scope="module")
def model_redis() -> Any:
    server = RedisServer(scratch_dir("tally-model-redis-"), appendonly=True).start()
    yield server
    server.stop()


def test_model(model_redis: RedisServer, postgres: PostgresCluster) -> None:
    TallyModel.redis_server = model_redis
    TallyModel.cluster = postgres
    TallyModel.TestCase.settings = settings(
        max_examples=12,
        stateful_step_count=25,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    TallyModel.TestCase().runTest()
