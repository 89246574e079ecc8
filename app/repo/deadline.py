"""One time budget for all the PostgreSQL operations of a unit of work (an API request).

asyncpg's own time-outs are per step and add up: a statement to a frozen server waits the
command time-out, then the pool's release waits as long again for the cancel request, and
a new connection waits the connect time-out first. A budget set once per request and
enforced around each repository call (:func:`app.repo.errors.translated`) bounds the sum,
whatever asyncpg is doing. Cancelling the caller is safe: asyncpg shields the pool's
release, which finishes (or terminates the connection) in the background.

The clock starts at the first database operation, not when the budget is set: the time a
client takes to upload a body is not PostgreSQL's. A caller can start it earlier
(:func:`start_clock`): the exact reads do, before their Redis read, so their PostgreSQL
snapshot follows the Redis one by at most the budget.

The budget lives in a context variable, so it follows the request through every call
without being passed down. Tasks started elsewhere (the flusher, whose commits have
time-outs of their own) never see it; a task a request starts inherits it, unless it
sets its own (the key cache's background refresh does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import anyio


@dataclass
class _Budget:
    seconds: float
    # On anyio's clock (the event loop's); None until the first database operation.
    deadline: float | None = None


_budget: ContextVar[_Budget | None] = ContextVar("tally_database_budget", default=None)


@contextlib.contextmanager
def database_budget(seconds: float) -> Iterator[None]:
    """Within the block, database operations together take at most ``seconds``, counted
    from the first of them."""
    token = _budget.set(_Budget(seconds))
    try:
        yield
    finally:
        _budget.reset(token)


def remaining() -> float | None:
    """Seconds left of the current budget (≤ 0 once spent), or None outside one.

    The first call in a budget starts its clock.
    """
    budget = _budget.get()
    if budget is None:
        return None
    now = anyio.current_time()
    if budget.deadline is None:
        budget.deadline = now + budget.seconds
        # Not ``deadline - now``: in floating point that can come out above the budget.
        return budget.seconds
    return budget.deadline - now


def start_clock() -> None:
    """Start the current budget's clock now, if it has not started (no-op outside one)."""
    remaining()
