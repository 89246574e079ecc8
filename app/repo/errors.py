"""The repository's exception tree, matched on SQLSTATE classes, never on message text."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
import asyncpg

from app.repo.deadline import remaining


class RepoError(Exception):
    """Base of every error :mod:`app.repo` raises."""


class DatabaseUnavailableError(RepoError):
    """PostgreSQL cannot be reached, timed out, or is shutting down (HTTP 503)."""


class IntegrityError(RepoError):
    """A constraint refused the write (class 23)."""


# SQLSTATE classes that mean "the server is not usable right now", not "your query is wrong":
# 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown,
# statement timeout 57014), 58 system error.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


def translate(exc: BaseException) -> RepoError | None:
    """The repo error ``exc`` stands for, or None if it is not a database error."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", "") or ""
        if sqlstate[:2] in _UNAVAILABLE_CLASSES:
            return DatabaseUnavailableError(f"database unavailable ({sqlstate})")
        if sqlstate.startswith("23"):
            return IntegrityError(f"constraint violated ({sqlstate})")
        return None
    if isinstance(
        exc,
        (
            OSError,
            TimeoutError,
            asyncio.TimeoutError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
        ),
    ):
        return DatabaseUnavailableError(f"database unavailable ({type(exc).__name__})")
    return None


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Re-raise driver and network errors inside the block as :class:`RepoError`.

    Inside a budget (:func:`app.repo.deadline.database_budget`) the block is cancelled
    when the budget is spent: :class:`DatabaseUnavailableError`, whichever asyncpg step was
    waiting. Nested blocks share the one deadline.
    """
    left = remaining()
    try:
        with contextlib.nullcontext() if left is None else anyio.fail_after(left):
            yield
    except RepoError:
        raise
    except TimeoutError as exc:
        spent = left is not None and (remaining() or 0.0) <= 0
        reason = "time budget spent" if spent else "TimeoutError"
        raise DatabaseUnavailableError(f"database unavailable ({reason})") from exc
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc
