"""The flusher: drain → commit → ack per shard, resuming whatever a crash left.

Per shard (design/hot-cold.md):
1. **Drain** (Lua, allow-oom): resume the pending flush if one exists, else freeze the hot
   data as a new pending flush with the next seq and a fresh flush id.
2. **Commit** (one PostgreSQL transaction): the flush row (tenant, shard, seq) and its usage
   rows, or nothing if that flush was already committed (a crash before the ack).
3. **Ack** (Lua): delete the pending data only if it is still the flush just committed.

A crash anywhere leaves either the pending data in Redis (resumed next cycle) or a
committed flush whose re-commit is a no-op. Several flushers are correct at once; a short
per-shard lease only saves them from doing the same work.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.exceptions import OutOfMemoryError

from app.hotpath.keys import HEARTBEAT, SHARDS, TenantKeys
from app.hotpath.redis_errors import RedisUnavailableError, redis_errors
from app.metrics import metrics
from app.repo import tenants
from app.repo.errors import DatabaseUnavailableError, RepoError
from app.repo.usage import CommitOutcome, SequenceAnomalyError, commit_flush, rollup
from app.scripts import Scripts
from app.settings import Settings
from app.worker.lag import measure_lag
from app.worker.pending import Drained, count_pending_fields, read_pending
from app.worker.status import FlusherStatus

log = structlog.get_logger("tally.flusher")

Checkpoint = Callable[[str], Awaitable[None]]
LEASE_SECONDS = 5
CONCURRENT_SHARDS = 4


async def _no_checkpoint(name: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What one shard flush did."""

    fields: int = 0
    rows: int = 0
    committed: bool = False
    resumed: bool = False
    skipped: bool = False


def _most_serious(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """One exception standing for a task group's: an anomaly first, then an outage."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (SequenceAnomalyError, RedisUnavailableError, DatabaseUnavailableError):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0]


class Flusher:
    """Moves usage from Redis to PostgreSQL; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        pool: asyncpg.Pool,
        *,
        checkpoint: Checkpoint = _no_checkpoint,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.scripts = Scripts.register(redis)
        self.checkpoint = checkpoint
        self.flusher_id = secrets.token_hex(8)
        self.status = FlusherStatus()
        self._stop = anyio.Event()
        self._done = anyio.Event()
        # On time.monotonic()'s clock; 0 means due now.
        self._rollup_due_at = 0.0
        self._tenants: list[str] = []  # the last list read from PostgreSQL

    # -- one shard ------------------------------------------------------------------

    async def flush_shard(self, tenant: str, shard: int, *, lease_wait: float = 0.0) -> ShardResult:
        """Drain, commit and ack one shard (resuming a pending flush first)."""
        keys = TenantKeys(tenant)
        if not await self._take_lease(keys, shard, lease_wait):
            return ShardResult(skipped=True)
        try:
            return await self._flush_shard(keys, shard)
        finally:
            async with redis_errors():
                # Release only our own lease (compare-and-delete is not worth a script:
                # a stale release just lets another flusher start a little early).
                if await self.redis.get(keys.lease(shard)) == self.flusher_id.encode():
                    await self.redis.delete(keys.lease(shard))

    async def _take_lease(self, keys: TenantKeys, shard: int, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            try:
                async with redis_errors():
                    taken = await self.redis.set(
                        keys.lease(shard), self.flusher_id, nx=True, ex=LEASE_SECONDS
                    )
            except RedisUnavailableError as exc:
                if not isinstance(exc.__cause__, OutOfMemoryError):
                    raise
                # Redis is full and refuses the lease; draining is what frees memory and
                # is safe without a lease, so go ahead.
                return True
            if taken:
                return True
            if time.monotonic() >= deadline:
                # The lease only avoids duplicate work; past the wait, flushing anyway is safe.
                return wait > 0
            await anyio.sleep(0.1)

    async def _flush_shard(self, keys: TenantKeys, shard: int) -> ShardResult:
        async with redis_errors():
            reply = await self.scripts.drain(
                keys=[
                    keys.dirty(shard),
                    keys.pending_customers(shard),
                    keys.meta(shard),
                    keys.seq(shard),
                    keys.first(shard),
                ],
                args=[
                    keys.hot_prefix,
                    keys.pending_prefix,
                    secrets.token_hex(16),
                    int(time.time() * 1000),
                ],
            )
        drained = Drained.from_reply(reply)
        if drained is None:
            return ShardResult()
        await self.checkpoint("after_drain")
        async with redis_errors():
            rows, fields_read = await read_pending(self.redis, keys, shard)
        if fields_read != drained.fields:
            async with redis_errors():
                now = await count_pending_fields(self.redis, keys, shard)
            # The pending flush changed under us: another flusher acked it (after committing
            # it) and maybe drained the next. Nothing to do; the next cycle sees the truth.
            log.info(
                "flush.raced",
                tenant=keys.tenant,
                shard=shard,
                seq=drained.seq,
                expected=drained.fields,
                read=fields_read,
                now=now,
            )
            return ShardResult(skipped=True)
        outcome = await commit_flush(
            self.pool,
            keys.tenant,
            shard,
            drained.seq,
            drained.flush_id,
            drained.drained_at,
            rows,
            self.checkpoint,
            statement_timeout=self.settings.database_timeout,
        )
        await self.checkpoint("after_commit")
        async with redis_errors():
            acked = await self.scripts.ack(
                keys=[keys.pending_customers(shard), keys.meta(shard)],
                args=[keys.pending_prefix, drained.flush_id],
            )
        await self.checkpoint("after_ack")
        committed = outcome is CommitOutcome.COMMITTED
        event = "flush.recovered" if drained.resumed else "flush.committed"
        if not committed:
            event = "flush.already_committed"
        log.info(
            event,
            tenant=keys.tenant,
            shard=shard,
            seq=drained.seq,
            fields=fields_read,
            acked=bool(acked),
            lag_ms=int(time.time() * 1000) - drained.oldest_ms,
        )
        return ShardResult(
            fields=fields_read,
            rows=len(rows) if committed else 0,
            committed=committed,
            resumed=drained.resumed,
        )

    # -- a cycle --------------------------------------------------------------------

    async def cycle(self, *, lease_wait: float = 0.0, roll_up: bool = True) -> list[ShardResult]:
        """Flush every shard of every tenant once, then roll up when due (``roll_up``).
        Raises on outages and anomalies."""
        started = time.perf_counter()
        try:
            names = self._tenants = await tenants.list_tenants(self.pool)
        except RepoError:
            # PostgreSQL is down: the cycle fails, but Redis still tells how old the
            # unflushed usage is (the lag gauge must keep rising, not freeze).
            if self._tenants:  # none known yet: no measure beats a lag of 0
                with contextlib.suppress(Exception):
                    await self._measure_lag(self._tenants)
            raise
        results: list[ShardResult] = []
        limiter = anyio.Semaphore(CONCURRENT_SHARDS)

        async def one(tenant: str, shard: int) -> None:
            async with limiter:
                results.append(await self.flush_shard(tenant, shard, lease_wait=lease_wait))

        try:
            async with anyio.create_task_group() as tg:
                for tenant in names:
                    for shard in range(SHARDS):
                        tg.start_soon(one, tenant, shard)
        except BaseExceptionGroup as group:
            raise _most_serious(group) from group
        await self._heartbeat()
        m = metrics()
        m.flush_cycles.inc()
        m.flush_duration.observe(time.perf_counter() - started)
        m.flush_fields.inc(sum(r.fields for r in results if r.committed))
        m.flush_rows.inc(sum(r.rows for r in results))
        await self._measure_lag(names)
        self.status.cycles += 1
        self.status.last_cycle_at = time.time()
        if roll_up:
            await self._roll_up_when_due()
        return results

    async def _measure_lag(self, names: list[str]) -> None:
        async with redis_errors():
            lag = await measure_lag(self.redis, names, self.settings.idempotency_ttl)
        m = metrics()
        m.flush_lag.set(lag.flush_lag)
        m.flush_pending_age.set(lag.pending_age)

    async def _roll_up_when_due(self) -> None:
        """Roll old flush rows up, at most every ``rollup_interval`` (and sooner while it
        finds work)."""
        if time.monotonic() < self._rollup_due_at:
            return
        # Set before the call: a roll-up that fails (or times out) waits a whole interval
        # before the next try instead of running again every cycle.
        self._rollup_due_at = time.monotonic() + self.settings.rollup_interval
        if await self.roll_up():
            # A roll-up folds a bounded batch (about 20,000 rows): while it finds work
            # the next cycle rolls up again, one batch per flush interval.
            self._rollup_due_at = 0.0

    async def roll_up(self) -> int:
        """One bounded roll-up batch; returns the flushes folded. A failed roll-up is
        logged and counted, never raised: the flushes have committed, and the next
        interval tries again."""
        try:
            folded = await rollup(
                self.pool,
                self.settings.rollup_age,
                statement_timeout=self.settings.database_timeout,
            )
        except Exception as exc:
            # An outage, and any other error too (a schema not migrated yet, a bug).
            metrics().flush_failures.labels("rollup").inc()
            if isinstance(exc, DatabaseUnavailableError):
                log.warning("flush.rollup_failed", error=str(exc))
            else:
                log.exception("flush.rollup_error")
            return 0
        if folded:
            log.info("flush.rolled_up", flushes=folded)
        return folded

    async def _heartbeat(self) -> None:
        ttl = max(30, int(self.settings.flush_interval * 3) + 5)
        value = json.dumps({"flusher": self.flusher_id, "at": time.time()})
        try:
            async with redis_errors():
                await self.redis.set(HEARTBEAT, value, ex=ttl)
        except RedisUnavailableError as exc:
            if not isinstance(exc.__cause__, OutOfMemoryError):
                raise
            log.warning("flush.heartbeat_refused", reason="redis out of memory")

    async def flush_all(self, *, lease_wait: float = 10.0) -> list[ShardResult]:
        """Drain everything hot and pending, waiting for other flushers' leases (``--once``).

        Repeats until a cycle finds nothing: data that arrives meanwhile is flushed too,
        bounded so a busy ingest cannot keep it going forever.
        """
        everything: list[ShardResult] = []
        for _ in range(10):
            # No roll-up here: the final flush on shutdown only drains, within its grace
            # (--once rolls up one batch after draining: app.worker.main).
            results = await self.cycle(lease_wait=lease_wait, roll_up=False)
            everything += results
            if not any(r.fields or r.skipped for r in results):
                break
        return everything

    # -- the loop -------------------------------------------------------------------

    async def _guarded_cycle(self) -> None:
        try:
            await self.cycle()
        except SequenceAnomalyError as exc:
            self._halt(exc)
        except (RedisUnavailableError, DatabaseUnavailableError) as exc:
            self.status.failures += 1
            reason = "redis" if isinstance(exc, RedisUnavailableError) else "postgresql"
            metrics().flush_failures.labels(reason).inc()
            log.warning("flush.failed", error=str(exc))
        except Exception:
            # A bug must not stop the loop for good: the cycle is retried next interval,
            # and every step is safe to repeat. Cancellation (BaseException) still ends it.
            self.status.failures += 1
            metrics().flush_failures.labels("error").inc()
            log.exception("flush.error")

    def _halt(self, exc: SequenceAnomalyError) -> None:
        self.status.halt(str(exc))
        m = metrics()
        m.flusher_halted.set(1)
        m.flush_failures.labels("halted").inc()
        log.error("flush.halted", reason=str(exc))

    async def run_until_stopped(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Cycle every interval until :meth:`stop`; then one final flush within the grace.

        A halted flusher stops cycling (it would double count) but keeps the process up so
        readiness and metrics can say why.
        """
        task_status.started()
        try:
            while not self._stop.is_set():
                if not self.status.halted:
                    await self._guarded_cycle()
                with anyio.move_on_after(self.settings.flush_interval):
                    await self._stop.wait()
            if not self.status.halted:
                with anyio.move_on_after(self.settings.shutdown_grace) as scope:
                    await self._final_flush()
                if scope.cancelled_caught:
                    log.warning("flush.final_incomplete", grace=self.settings.shutdown_grace)
        finally:
            self._done.set()

    async def _final_flush(self) -> None:
        try:
            results = await self.flush_all(lease_wait=1.0)
            log.info("flush.final", fields=sum(r.fields for r in results))
        except SequenceAnomalyError as exc:
            self._halt(exc)
        except (RedisUnavailableError, DatabaseUnavailableError) as exc:
            metrics().flush_failures.labels("final").inc()
            log.warning("flush.final_failed", error=str(exc))

    def request_stop(self) -> None:
        """Ask the loop to finish its cycle, flush a last time and return."""
        self._stop.set()

    async def stop(self) -> None:
        """Request a stop and wait for the final flush (bounded by the grace period)."""
        self.request_stop()
        with anyio.move_on_after(self.settings.shutdown_grace + 2):
            await self._done.wait()
