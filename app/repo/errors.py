"""The repository's exception tree, matched on SQLSTATE classes, never on message text."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg


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
    """Re-raise driver and network errors inside the block as :class:`RepoError`."""
    try:
        yield
    except RepoError:
        raise
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc
