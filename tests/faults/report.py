"""The soak's figures, rendered as Markdown between two markers of docs/reliability.md."""

from __future__ import annotations

import math
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from tests.faults.check import Equality
from tests.faults.client import Attempt
from tests.faults.injectors import FaultLog

START, END = "<!-- soak:start -->", "<!-- soak:end -->"
# A request answered within this long after a fault's recovery still counts as inside it
# (reconnecting clients, a restarted process warming up).
SETTLE_NS = 1_000_000_000


def percentile(values: list[int], pct: int) -> int:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct * len(ordered) / 100) - 1)]


def ms(ns: int) -> str:
    return f"{Decimal(ns).scaleb(-6).quantize(Decimal('0.1'))} ms"


def _int(n: int) -> str:
    return f"{n:,}"


@dataclass(frozen=True, slots=True)
class Memory:
    """Redis memory for idempotency at the end (after the final flush)."""

    keys: int
    used_memory_delta: int
    hashes_bytes: int
    slot_hashes: int
    fanout: int

    def per_key(self, total: int) -> str:
        return f"{Decimal(total) / max(1, self.keys):.1f} B"


@dataclass
class SoakResult:
    """Everything the report says about one soak."""

    started_at: datetime
    seconds: float
    fault_every: float
    workers: str
    events: int
    retries: int
    duplicates: int
    checked_reads: int
    attempts: list[Attempt]
    faults: FaultLog
    memory: Memory | None = None
    equality: Equality | None = None
    failure: str | None = None
    hostile: str | None = None
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.statuses = Counter((a.kind, a.status) for a in self.attempts)

    def latency(self, kind: str, inside: bool) -> str:
        """p50 / p99 of the 2xx answers of ``kind`` inside or outside the fault windows."""
        took = [
            a.ended_ns - a.started_ns
            for a in self.attempts
            if a.kind == kind
            and 200 <= a.status < 300
            and self.faults.overlaps(a.started_ns, a.ended_ns, SETTLE_NS) == inside
        ]
        if not took:
            return "—"
        return f"{ms(percentile(took, 50))} / {ms(percentile(took, 99))} ({_int(len(took))})"

    def requests(self, kinds: tuple[str, ...]) -> str:
        counted = Counter[str]()
        for (kind, status), n in self.statuses.items():
            if kind in kinds:
                label = "no answer" if status == 0 else f"{status}"
                counted[label] += n
        total = sum(counted.values())
        parts = ", ".join(f"{label}: {_int(n)}" for label, n in sorted(counted.items()))
        return f"{_int(total)} ({parts})"

    def fault_summary(self) -> str:
        by_kind = Counter[str]()
        down = Counter[str]()
        for window in self.faults.windows:
            by_kind[window.kind] += 1
            down[window.kind] += window.ended_ns - window.started_ns
        return ", ".join(
            f"{kind} ×{n} ({Decimal(down[kind]).scaleb(-9):.1f} s)"
            for kind, n in sorted(by_kind.items())
        )


def render(result: SoakResult) -> str:
    """The report section (without the markers)."""
    r = result
    cores = os.cpu_count()
    if r.failure is not None:
        verdict = f"**FAILED**: {r.failure}"
    else:
        assert r.equality is not None
        e = r.equality
        verdict = (
            f"**exact**: {_int(e.cells)} (customer, resource, hour) cells, {_int(e.events)} "
            f"events, {Decimal(e.micro).scaleb(-6)} units: the truth = usage API before the "
            "final flush (hot + cold) = `usage_records` after it (nothing left in Redis) = "
            f"usage API = bills; {_int(e.rolled_up)} flushes rolled up meanwhile, the monthly "
            "totals equal to their rows"
        )
    rows = [
        ("started", f"{r.started_at:%Y-%m-%d %H:%M} UTC, {platform.machine()}, {cores} cores"),
        ("duration", f"{Decimal(r.seconds).quantize(Decimal(1))} s of load ({r.workers})"),
        ("events acknowledged", _int(r.events)),
        ("ingest requests (single + batch)", r.requests(("single", "batch"))),
        ("read requests (usage + bill)", r.requests(("usage", "bill"))),
        ("reads checked within [acknowledged before, + in flight after]", _int(r.checked_reads)),
        ("retries (same idempotency keys)", _int(r.retries)),
        ("duplicate answers (retried events already applied, counted once)", _int(r.duplicates)),
        (f"faults, one every {r.fault_every:g} s", r.fault_summary()),
        ("single ingest p50 / p99, outside fault windows", r.latency("single", inside=False)),
        ("single ingest p50 / p99, inside (+1 s)", r.latency("single", inside=True)),
        ("batch ingest p50 / p99, outside fault windows", r.latency("batch", inside=False)),
        ("batch ingest p50 / p99, inside (+1 s)", r.latency("batch", inside=True)),
    ]
    if r.memory is not None:
        m = r.memory
        rows.append(
            (
                "Redis memory per idempotency key",
                f"{m.per_key(m.hashes_bytes)} (`MEMORY USAGE` of the {_int(m.slot_hashes)} "
                f"slot hashes of fanout {_int(m.fanout)} and the window counters, / "
                f"{_int(m.keys)} keys); {m.per_key(m.used_memory_delta)} (`used_memory` "
                "growth / keys)",
            )
        )
    if r.hostile is not None:
        rows.append(("Schemathesis (larger run)", r.hostile))
    rows.append(("final equality", verdict))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return (
        "### Last soak (`make soak`)\n\n"
        "Latencies are of 2xx answers, per HTTP attempt, measured by the client on the same "
        "machine; the count of answers is in brackets.\n\n"
        f"| figure | value |\n|---|---|\n{table}\n"
    )


def write_report(path: Path, section: str) -> None:
    """Replace what is between the markers in ``path`` (or append them with the section)."""
    text = path.read_text() if path.exists() else ""
    block = f"{START}\n{section}{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
