"""The faults a deployment can suffer, each a timed window: inject, stay down, recover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from tests.faults.processes import Deployment

# Longer than the processes' PostgreSQL timeouts (TALLY_DATABASE_TIMEOUT=1 s per statement,
# then 1 s for the cancel request), so the flusher times out while the server is frozen.
FREEZE_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One kind of fault: ``inject``, wait ``down_for`` seconds, ``recover``."""

    kind: str
    inject: Callable[[], Awaitable[None]]
    recover: Callable[[], Awaitable[None]]
    down_for: float


@dataclass(frozen=True, slots=True)
class Window:
    """When a fault was in effect (perf_counter_ns), from injection to recovery."""

    kind: str
    started_ns: int
    ended_ns: int


@dataclass
class FaultLog:
    """The windows of the faults applied so far."""

    windows: list[Window] = field(default_factory=list)

    async def apply(self, fault: Fault) -> Window:
        started = time.perf_counter_ns()
        try:
            await fault.inject()
            await asyncio.sleep(fault.down_for)
        finally:
            await fault.recover()
        window = Window(fault.kind, started, time.perf_counter_ns())
        self.windows.append(window)
        return window

    def overlaps(self, started_ns: int, ended_ns: int, settle_ns: int = 0) -> bool:
        """Whether [started, ended] meets a window (extended by ``settle_ns`` after it)."""
        return any(
            started_ns <= w.ended_ns + settle_ns and ended_ns >= w.started_ns for w in self.windows
        )


def _sync(call: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await asyncio.to_thread(call)

    return run


def _now(call: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    # For calls that must run on the main thread: children started elsewhere would die
    # with their thread (PR_SET_PDEATHSIG).
    async def run() -> None:
        call()

    return run


def faults(d: Deployment) -> dict[str, Fault]:
    """Every fault kind the soak cycles through, by name."""

    def set_maxmemory(value: str) -> Callable[[], object]:
        def call() -> None:
            with d.redis_client() as client:
                client.config_set("maxmemory", value)

        return call

    async def restart_flusher() -> None:
        d.flusher.start()

    return {
        "api_sigkill": Fault("api_sigkill", _now(d.api.kill), d.api.restart, 0.3),
        # SIGKILL, then a restart on the AOF (appendfsync always).
        "redis_sigkill": Fault("redis_sigkill", _sync(d.redis.kill), _sync(d.redis.start), 0.3),
        "postgres_stop": Fault(
            "postgres_stop", _sync(d.postgres.stop), _sync(d.postgres.start), 3.0
        ),
        "postgres_sigstop": Fault(
            "postgres_sigstop", _now(d.postgres.freeze), _now(d.postgres.thaw), FREEZE_SECONDS
        ),
        "flusher_sigkill": Fault("flusher_sigkill", _now(d.flusher.kill), restart_flusher, 0.5),
        # A tiny maxmemory: ingest is refused (503, nothing applied), draining still works.
        "redis_oom": Fault("redis_oom", _sync(set_maxmemory("1")), _sync(set_maxmemory("0")), 2.0),
    }


async def wait_for_open_flush(database_url: str, within: float = 30.0) -> None:
    """Return once a flusher transaction is open and waiting (``TALLY_FAULT_PAUSE_AT``
    holds it after its inserts, before COMMIT)."""
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            open_transactions = await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = 'tally' AND state = 'idle in transaction'""",
                timeout=5,
            )
            if open_transactions:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no flusher transaction opened within {within} s")
    finally:
        await conn.close(timeout=5)
