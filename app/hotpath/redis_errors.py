"""Redis failures as the service's own exceptions (HTTP 503)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis import exceptions as rexc


class RedisUnavailableError(Exception):
    """Redis is down, timed out, loading, read-only, or out of memory (HTTP 503)."""


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis cannot take the command now (not a bug of ours)."""
    if isinstance(
        exc,
        (
            rexc.ConnectionError,
            rexc.TimeoutError,
            rexc.BusyLoadingError,
            rexc.ReadOnlyError,
            rexc.OutOfMemoryError,
            rexc.MasterDownError,
            rexc.TryAgainError,
            rexc.MaxConnectionsError,
            OSError,
            TimeoutError,
        ),
    ):
        return True
    if isinstance(exc, rexc.ResponseError):
        message = str(exc)
        return message.startswith(
            ("OOM", "LOADING", "MASTERDOWN", "READONLY", "BUSY", "TRYAGAIN", "CLUSTERDOWN")
        )
    return False


@contextlib.asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Re-raise Redis outages inside the block as :class:`RedisUnavailableError`."""
    try:
        yield
    except RedisUnavailableError:
        raise
    except Exception as exc:
        if is_unavailable(exc):
            raise RedisUnavailableError(f"redis unavailable: {type(exc).__name__}: {exc}") from exc
        raise
