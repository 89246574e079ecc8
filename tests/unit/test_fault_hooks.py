"""The flusher's fault hooks (app/worker/faults.py) that the crash and freeze tests use."""

from __future__ import annotations

import time

import anyio
import pytest

from app.worker.faults import checkpoint_from_env


async def test_pause_sleeps_at_its_step_every_time() -> None:
    checkpoint = checkpoint_from_env({"TALLY_FAULT_PAUSE_AT": "after_insert:0.05"})
    for _ in range(2):
        started = time.monotonic()
        await checkpoint("after_insert")
        assert time.monotonic() - started >= 0.04


async def test_pause_leaves_other_steps_alone() -> None:
    checkpoint = checkpoint_from_env({"TALLY_FAULT_PAUSE_AT": "after_insert:60"})
    with anyio.fail_after(10):
        await checkpoint("after_drain")
        await checkpoint("after_commit")


def test_unknown_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="TALLY_FAULT_PAUSE_AT"):
        checkpoint_from_env({"TALLY_FAULT_PAUSE_AT": "before_lunch:1"})
    with pytest.raises(ValueError, match="TALLY_FAULT_CRASH_AT"):
        checkpoint_from_env({"TALLY_FAULT_CRASH_AT": "nowhere"})


def test_malformed_arguments_are_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="TALLY_FAULT_PAUSE_AT"):
        checkpoint_from_env({"TALLY_FAULT_PAUSE_AT": "after_insert:soon"})
    with pytest.raises(ValueError, match="TALLY_FAULT_CRASH_AT"):
        checkpoint_from_env({"TALLY_FAULT_CRASH_AT": "after_insert:third"})
