"""Bearer API keys: verified against PostgreSQL, cached in process.

The ingest path must not query PostgreSQL per request: a verified key is cached for
``ttl`` seconds (so a revocation is seen within that time). When PostgreSQL is down, a key
already in the cache keeps working past its TTL (ingest survives the outage); a key that
is not in the cache cannot be checked and gets 503, never 401.

During an outage a request waits for a failing lookup at most once per key: after that
the key is served from the cache at once and looked up again in the background (at most
every RETRY_AFTER_FAILURE seconds) until PostgreSQL answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import structlog

from app import apikeys
from app.apikeys import Scope
from app.errors import ApiError
from app.repo.deadline import database_budget
from app.repo.errors import DatabaseUnavailableError
from app.repo.tenants import KeyRecord

log = structlog.get_logger("tally.auth")

Lookup = Callable[[str], Awaitable[KeyRecord | None]]
# Unknown key ids are remembered briefly too, so a flood of bad keys does not reach the
# database once per request.
NEGATIVE_TTL = 1.0
# After a failed refresh a cached key is served without asking again for this long: while
# PostgreSQL hangs, every request would otherwise wait out the failing lookup.
RETRY_AFTER_FAILURE = 1.0
# An expired key known to be good waits at most this long for its new lookup; then it is
# served from the cache while the lookup goes on (a request must leave time for Redis).
STALE_WAIT = 0.5


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant comes from the key only."""

    key_id: str
    tenant: str
    scope: Scope
    customer_id: str | None


@dataclass
class _Entry:
    record: KeyRecord | None
    fetched_at: float
    # The last lookup failed (PostgreSQL down): refresh in the background, serve the cache.
    degraded: bool = False


def _unauthorized(message: str = "missing or unknown API key") -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


@dataclass
class KeyCache:
    """Verified keys by id, with single-flight refreshes."""

    lookup: Lookup
    ttl: float
    # A background refresh's PostgreSQL budget (a request's own lookups have the request's).
    lookup_budget: float = 1.5
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _inflight: dict[str, asyncio.Future[KeyRecord | None]] = field(default_factory=dict)
    # Background refreshes of degraded entries (referenced so they are not collected).
    _refreshing: set[asyncio.Task[Any]] = field(default_factory=set)

    async def _record(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        entry = self._entries.get(key_id)
        if entry is not None:
            fresh_for = self.ttl if entry.record is not None else NEGATIVE_TTL
            if now - entry.fetched_at < fresh_for:
                return entry.record
            if entry.degraded and entry.record is not None:
                self._refresh_in_background(key_id, entry)
                return entry.record
        if entry is not None and entry.record is not None:
            return await self._revalidate(key_id, entry)
        return await self._fetch_and_keep(key_id)

    async def _fetch_and_keep(self, key_id: str) -> KeyRecord | None:
        record = await self._fetch(key_id)
        self._entries[key_id] = _Entry(record, time.monotonic())
        return record

    async def _revalidate(self, key_id: str, entry: _Entry) -> KeyRecord | None:
        """An expired key known to be good: look it up again, but serve the cached record
        if PostgreSQL is down or has not answered within ``STALE_WAIT`` (the lookup goes
        on in the background). Waiting the whole PostgreSQL budget here, then Redis's
        time-out, answered 503 after 2.5 s with both down (CONTRACT §2: within 2 s)."""
        lookup = asyncio.get_running_loop().create_task(self._fetch_and_keep(key_id))
        try:
            return await asyncio.wait_for(asyncio.shield(lookup), STALE_WAIT)
        except (DatabaseUnavailableError, TimeoutError):
            # Serve from the cache while PostgreSQL is down; look again after a pause,
            # without making requests wait for it.
            entry.degraded = True
            self._pause(entry)
            return entry.record
        finally:
            if not lookup.done():  # timed out, or this request was cancelled: it goes on
                self._refreshing.add(lookup)
                lookup.add_done_callback(lambda task: self._lookup_ended(key_id, task))

    def _lookup_ended(self, key_id: str, task: asyncio.Task[KeyRecord | None]) -> None:
        self._refreshing.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, DatabaseUnavailableError):
            # As for a background refresh: not PostgreSQL being down, so stop serving the
            # cached key (it might have been revoked); the next request looks it up.
            log.error("auth.key_refresh_failed", key_id=key_id, error=repr(exc))
            self._entries.pop(key_id, None)

    def _pause(self, entry: _Entry) -> None:
        retry_at = time.monotonic() + min(self.ttl, RETRY_AFTER_FAILURE)
        entry.fetched_at = retry_at - self.ttl

    def _refresh_in_background(self, key_id: str, entry: _Entry) -> None:
        self._pause(entry)  # one refresh per pause, however many requests come
        task = asyncio.get_running_loop().create_task(self._refresh(key_id))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh(self, key_id: str) -> None:
        try:
            # Its own budget: the task runs in a copy of the request's context, whose
            # budget is the request's to spend.
            with database_budget(self.lookup_budget):
                record = await self._fetch(key_id)
        except DatabaseUnavailableError:
            return  # still down: the entry stays degraded, tried again after the pause
        except Exception:
            # Not PostgreSQL being down: stop serving the cached key (it might have been
            # revoked); the next request looks it up itself and gets the error.
            log.exception("auth.key_refresh_failed", key_id=key_id)
            self._entries.pop(key_id, None)
            return
        self._entries[key_id] = _Entry(record, time.monotonic())

    async def close(self) -> None:
        """Cancel the background refreshes and wait for them to end (the lifespan calls
        this before it closes the pool they use)."""
        tasks = list(self._refreshing)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch(self, key_id: str) -> KeyRecord | None:
        pending = self._inflight.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[key_id] = future
        try:
            record = await self.lookup(key_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters may be none
            raise
        else:
            future.set_result(record)
            return record
        finally:
            del self._inflight[key_id]

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an ``Authorization`` header, or 401 / 503."""
        if not authorization:
            raise _unauthorized("missing Authorization: Bearer <key>")
        scheme, _, text = authorization.partition(" ")
        text = text.strip()
        if scheme.lower() != "bearer" or not text:
            raise _unauthorized("Authorization must be 'Bearer <key>'")
        key_id = apikeys.key_id_of(text)
        if key_id is None:
            raise _unauthorized()
        record = await self._record(key_id)
        if record is None or record.revoked or not apikeys.matches(text, record.secret_hash):
            raise _unauthorized()
        return Principal(record.key_id, record.tenant, record.scope, record.customer_id)


def require(principal: Principal, scopes: Collection[Scope]) -> None:
    """403 unless the principal's scope is one of ``scopes``."""
    if principal.scope not in scopes:
        allowed = " or ".join(sorted(s.value for s in scopes))
        raise ApiError(403, "forbidden", f"this route needs a key with scope {allowed}")
