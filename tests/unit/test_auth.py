"""The API-key cache: fresh for its TTL, stale while PostgreSQL is down, without making
every request wait for a lookup that keeps failing."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace

import anyio
import pytest

from app import apikeys
from app import auth as auth_module
from app.apikeys import Scope
from app.auth import RETRY_AFTER_FAILURE, KeyCache
from app.errors import ApiError
from app.repo.errors import DatabaseUnavailableError
from app.repo.tenants import KeyRecord

pytestmark = pytest.mark.unit


class Database:
    """A key table that can be taken down; counts lookups."""

    def __init__(self, key: apikeys.NewKey) -> None:
        self.record = KeyRecord(
            key_id=key.key_id,
            tenant="t",
            scope=Scope.INGEST,
            customer_id=None,
            secret_hash=key.secret_hash,
            revoked=False,
        )
        self.down = False
        self.lookups = 0
        # Set: lookups wait for it (a hung PostgreSQL), then go on.
        self.hang: asyncio.Event | None = None

    async def lookup(self, key_id: str) -> KeyRecord | None:
        self.lookups += 1
        if self.hang is not None:
            await self.hang.wait()
        if self.down:
            raise DatabaseUnavailableError("database unavailable (test)")
        return self.record if key_id == self.record.key_id else None


async def test_a_failed_refresh_serves_the_cached_key_and_pauses_lookups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = apikeys.generate()
    db = Database(key)
    cache = KeyCache(db.lookup, ttl=5.0)
    clock = [1000.0]
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    bearer = f"Bearer {key.text}"
    assert (await cache.authenticate(bearer)).tenant == "t"
    assert db.lookups == 1
    clock[0] += 4.9  # still fresh: no lookup
    await cache.authenticate(bearer)
    assert db.lookups == 1
    db.down = True
    clock[0] += 0.2  # stale: one lookup, it fails, the cached key is served
    assert (await cache.authenticate(bearer)).tenant == "t"
    assert db.lookups == 2
    for _ in range(5):  # within the pause: served without asking PostgreSQL again
        clock[0] += RETRY_AFTER_FAILURE / 10
        await cache.authenticate(bearer)
    assert db.lookups == 2
    clock[0] += RETRY_AFTER_FAILURE  # after it: asks again (still down, still served)
    await cache.authenticate(bearer)
    await asyncio.sleep(0.01)  # the lookup runs in the background
    assert db.lookups == 3
    db.down = False
    clock[0] += RETRY_AFTER_FAILURE + 0.01  # back up: refreshed, fresh for the full TTL
    await cache.authenticate(bearer)
    await asyncio.sleep(0.01)
    assert db.lookups == 4
    clock[0] += 4.9
    await cache.authenticate(bearer)
    assert db.lookups == 4


async def test_an_unknown_key_while_down_is_503_not_401() -> None:
    db = Database(apikeys.generate())
    db.down = True
    cache = KeyCache(db.lookup, ttl=5.0)
    with pytest.raises(DatabaseUnavailableError):
        await cache.authenticate(f"Bearer {apikeys.generate().text}")
    db.down = False
    with pytest.raises(ApiError) as refused:
        await cache.authenticate(f"Bearer {apikeys.generate().text}")
    assert refused.value.status == 401


async def test_once_degraded_requests_never_wait_for_the_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hung PostgreSQL holds up at most one request per key: after the first failed
    lookup the cached key is served at once while lookups go on in the background."""
    key = apikeys.generate()
    db = Database(key)
    cache = KeyCache(db.lookup, ttl=5.0)
    clock = [1000.0]
    # Only the cache's clock: the event loop's must run for the sleeps below.
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    bearer = f"Bearer {key.text}"
    await cache.authenticate(bearer)
    db.down = True
    clock[0] += 5.1
    await cache.authenticate(bearer)  # this one waited for the failing lookup
    assert db.lookups == 2

    hung = asyncio.Event()
    db.hang = hung
    clock[0] += RETRY_AFTER_FAILURE + 0.01
    with anyio.fail_after(1):  # served without waiting for the hung lookup
        for _ in range(20):
            assert (await cache.authenticate(bearer)).tenant == "t"
    await asyncio.sleep(0)
    assert db.lookups == 3  # one background lookup for all twenty requests
    hung.set()  # it fails (still down): served from the cache, still degraded
    await asyncio.sleep(0.01)
    db.hang = None
    db.down = False
    clock[0] += RETRY_AFTER_FAILURE + 0.01
    await cache.authenticate(bearer)  # served at once; the refresh now succeeds
    await asyncio.sleep(0.01)
    assert db.lookups == 4
    # Fresh again: a revocation is seen at the next refresh, made in the request as before.
    db.record = dataclasses.replace(db.record, revoked=True)
    clock[0] += 5.1
    with pytest.raises(ApiError) as refused:
        await cache.authenticate(bearer)
    assert refused.value.status == 401
    assert db.lookups == 5


async def test_an_unexpected_refresh_error_stops_serving_the_cached_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only "PostgreSQL is down" keeps a degraded key in service: any other failure of
    the background lookup drops it, and the next request looks the key up itself."""
    key = apikeys.generate()
    db = Database(key)
    cache = KeyCache(db.lookup, ttl=5.0)
    clock = [1000.0]
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    bearer = f"Bearer {key.text}"
    await cache.authenticate(bearer)
    db.down = True
    clock[0] += 5.1
    await cache.authenticate(bearer)  # degraded now

    async def broken(key_id: str) -> KeyRecord | None:
        raise RuntimeError("a bug in the lookup")

    cache.lookup = broken
    clock[0] += RETRY_AFTER_FAILURE + 0.01
    await cache.authenticate(bearer)  # served; the background refresh fails oddly
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="a bug"):
        await cache.authenticate(bearer)
