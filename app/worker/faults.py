"""Fault injection for crash tests: exit abruptly, or pause, at a named flush step.

``TALLY_FAULT_CRASH_AT=after_insert`` (or ``after_drain``, ``after_commit``, ``after_ack``)
makes the flusher call ``os._exit(137)`` the first time it reaches that step; with
``TALLY_FAULT_CRASH_AT=after_insert:3`` the third time. ``TALLY_FAULT_PAUSE_AT=after_insert:0.5``
makes it sleep 0.5 s every time it reaches the step (``after_insert`` is inside the commit's
transaction, so a test can freeze PostgreSQL with the commit in flight). Unset in
production; the tests set them on flusher subprocesses to prove every crash point is safe.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal, InvalidOperation

import anyio

POINTS = ("after_drain", "after_insert", "after_commit", "after_ack")


def _point(name: str, spec: str) -> tuple[str, str]:
    point, _, argument = spec.partition(":")
    if point and point not in POINTS:
        raise ValueError(f"{name} must be one of {', '.join(POINTS)}")
    return point, argument


def checkpoint_from_env(env: Mapping[str, str]) -> Callable[[str], Awaitable[None]]:
    """A checkpoint callable for :class:`app.worker.flusher.Flusher`."""
    crash_point, nth = _point("TALLY_FAULT_CRASH_AT", env.get("TALLY_FAULT_CRASH_AT", ""))
    pause_point, pause = _point("TALLY_FAULT_PAUSE_AT", env.get("TALLY_FAULT_PAUSE_AT", ""))
    try:
        remaining = int(nth or "1")
    except ValueError:
        raise ValueError(f"TALLY_FAULT_CRASH_AT's count must be an integer, got {nth!r}") from None
    try:
        pause_seconds = float(Decimal(pause or "0"))
    except InvalidOperation:
        raise ValueError(
            f"TALLY_FAULT_PAUSE_AT's seconds must be a number, got {pause!r}"
        ) from None

    async def checkpoint(name: str) -> None:
        nonlocal remaining
        if name == pause_point:
            await anyio.sleep(pause_seconds)
        if name == crash_point:
            remaining -= 1
            if remaining <= 0:
                os._exit(137)

    return checkpoint
