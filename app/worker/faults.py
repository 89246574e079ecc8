"""Fault injection for crash tests: exit the process abruptly at a named flush step.

``TALLY_FAULT_CRASH_AT=after_insert`` (or ``after_drain``, ``after_commit``, ``after_ack``)
makes the flusher call ``os._exit(137)`` the first time it reaches that step; with
``TALLY_FAULT_CRASH_AT=after_insert:3`` the third time. Unset in production; the tests set
it on flusher subprocesses to prove every crash point is safe.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping

POINTS = ("after_drain", "after_insert", "after_commit", "after_ack")


def checkpoint_from_env(env: Mapping[str, str]) -> Callable[[str], Awaitable[None]]:
    """A checkpoint callable for :class:`app.worker.flusher.Flusher`."""
    spec = env.get("TALLY_FAULT_CRASH_AT", "")
    point, _, nth = spec.partition(":")
    if point and point not in POINTS:
        raise ValueError(f"TALLY_FAULT_CRASH_AT must be one of {', '.join(POINTS)}")
    remaining = int(nth or "1")

    async def checkpoint(name: str) -> None:
        nonlocal remaining
        if name == point:
            remaining -= 1
            if remaining <= 0:
                os._exit(137)

    return checkpoint
