"""The soak, cut down to fit CI: every fault kind once under mixed load, then exact totals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.report import END, START, render, write_report
from tests.faults.soak import SoakConfig, run_soak

pytestmark = pytest.mark.slow

KINDS = {
    "api_sigkill",
    "redis_sigkill",
    "postgres_stop",
    "postgres_sigstop",
    "flusher_sigkill",
    "redis_oom",
}


async def test_short_soak_with_every_fault_kind_is_exact(tmp_path: Path) -> None:
    result = await run_soak(SoakConfig(seconds=33, fault_every=5, fanout=256))
    section = render(result)
    print(section)
    assert result.failure is None, result.failure
    assert {w.kind for w in result.faults.windows} == KINDS
    assert result.retries > 0
    assert result.checked_reads > 0
    # Flushes older than TALLY_ROLLUP_AGE (15 s here) were rolled up under the faults, and
    # the final check found the monthly totals equal to their rows.
    assert result.equality is not None
    assert result.equality.rolled_up > 0
    # The report replaces only what is between its markers.
    report = tmp_path / "reliability.md"
    report.write_text(f"before\n{START}\nold figures\n{END}\nafter\n")
    write_report(report, section)
    text = report.read_text()
    assert text.startswith(f"before\n{START}\n### Last soak")
    assert text.endswith(f"{END}\nafter\n")
    assert "old figures" not in text
    assert "**exact**" in text
