"""The soak: mixed load with a fault every few seconds, then exact totals and a report.

``python -m tests.faults.soak [--report docs/reliability.md] [--hostile-examples N]``
(``make soak``). Single-event and batch ingests retried until answered, usage and bill reads
checked against the truth's bounds, and the faults of :func:`tests.faults.injectors.faults`
in turn: API SIGKILL + restart, Redis SIGKILL + AOF restart, PostgreSQL stop/start and
SIGSTOP/SIGCONT, flusher SIGKILL + restart, Redis out of memory. Then exact equality per
(customer, resource type, hour) between the truth, the read API, ``usage_records`` and the
bills. Settings from the environment: ``SOAK_SECONDS`` (600), ``SOAK_FAULT_EVERY`` (20 s
from one fault's start to the next), ``SOAK_FANOUT`` (the idempotency fanout, 2048).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.hotpath.keys import TenantKeys
from tests.faults.check import assert_exact
from tests.faults.client import Client, Load, under_load
from tests.faults.injectors import FaultLog, faults
from tests.faults.processes import Deployment, deployment
from tests.faults.report import Memory, SoakResult, render, write_report

TENANT = "soak"
LOAD = Load(
    singles=6,
    batches=2,
    readers=2,
    batch_size=50,
    single_pause=0.04,
    batch_pause=0.5,
    read_pause=0.2,
)


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """How long, how often a fault, and the idempotency fanout."""

    seconds: float = 600.0
    fault_every: float = 20.0
    fanout: int = 2048

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SoakConfig:
        return cls(
            seconds=float(env.get("SOAK_SECONDS", "600")),
            fault_every=float(env.get("SOAK_FAULT_EVERY", "20")),
            fanout=int(env.get("SOAK_FANOUT", "2048")),
        )


async def _chaos(d: Deployment, config: SoakConfig, log: FaultLog) -> None:
    """A fault every ``fault_every`` seconds, kinds in turn, until ``seconds`` are over."""
    kinds = itertools.cycle(faults(d).values())
    started = time.monotonic()
    next_at = started + config.fault_every / 2
    while next_at < started + config.seconds:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await log.apply(next(kinds))
        next_at += config.fault_every
    await asyncio.sleep(max(0.0, started + config.seconds - time.monotonic()))


def _memory(d: Deployment, keys: int, before: int, fanout: int) -> Memory:
    with d.redis_client() as redis:
        used = int(redis.info("memory")["used_memory"])
        prefix = TenantKeys(TENANT).prefix
        slots = list(redis.scan_iter(match=prefix + "idem:*", count=1000))
        counters = list(redis.scan_iter(match=prefix + "idemcount:*", count=1000))
        size = sum(int(redis.memory_usage(name, samples=0) or 0) for name in slots + counters)
    return Memory(keys, used - before, size, len(slots), fanout)


async def run_soak(config: SoakConfig) -> SoakResult:
    """Run the soak; the result says whether the totals were exact (it does not raise)."""
    async with deployment(TENANT, TALLY_IDEMPOTENCY_FANOUT=str(config.fanout)) as d:
        await d.start()
        with d.redis_client() as redis:
            before = int(redis.info("memory")["used_memory"])
        client = Client(
            d.api.url, d.key, customers=20, resources=("api_call", "gb", "sms"), key_prefix="s"
        )
        log = FaultLog()
        started_at = datetime.now(UTC)
        started = time.monotonic()
        failure = None
        try:
            await under_load(client, lambda: _chaos(d, config, log), LOAD)
        except* AssertionError as group:
            # A wrong answer or read: what was in flight is unknown, so no final check.
            failure = f"during the load: {group.exceptions[0]}"
        result = SoakResult(
            started_at=started_at,
            seconds=time.monotonic() - started,
            fault_every=config.fault_every,
            workers=(
                f"{LOAD.singles} single-event, {LOAD.batches} batch (1–{LOAD.batch_size} "
                f"events) and {LOAD.readers} read workers"
            ),
            events=client.events,
            retries=client.retries,
            duplicates=client.duplicates,
            checked_reads=client.checked_reads,
            attempts=client.attempts,
            faults=log,
        )
        if failure is not None:
            result.failure = failure
            return result
        try:
            result.equality = await assert_exact(d, client)
        except AssertionError as exc:
            result.failure = " ".join(str(exc).splitlines()[:3]) or repr(exc)
        result.memory = await asyncio.to_thread(_memory, d, client.events, before, config.fanout)
    return result


def run_hostile(examples: int) -> str:
    """The hostile-input tests with ``examples`` Schemathesis examples; a one-line verdict."""
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_hostile.py",
        ],
        env={**os.environ, "SCHEMATHESIS_MAX_EXAMPLES": str(examples)},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    tail = lines[-1] if lines else "no output"
    verdict = "passed" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    # Which tests failed (pytest's short summary), so the report says where to look.
    failed = [line.split()[1] for line in lines if line.startswith("FAILED ")]
    which = f"; failed: {', '.join(f'`{t}`' for t in failed)}" if failed else ""
    return (
        f"{verdict}: `SCHEMATHESIS_MAX_EXAMPLES={examples}` `tests/integration/test_hostile.py`"
        f" — {tail.strip('= ')} ({time.monotonic() - started:.0f} s){which}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__)
    parser.add_argument("--report", type=Path, help="write the report between the markers")
    parser.add_argument("--hostile-examples", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    config = SoakConfig.from_env(os.environ)
    result = asyncio.run(run_soak(config))
    if args.hostile_examples:
        result.hostile = run_hostile(args.hostile_examples)
    section = render(result)
    print(section)
    if args.report is not None:
        write_report(args.report, section)
    failed = result.failure is not None or (result.hostile or "").startswith("FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
