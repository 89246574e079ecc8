"""The API-key cache: fresh for its TTL, stale while PostgreSQL is down, without making
every request wait for a lookup that keeps failing."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import anyio
import pytest

from app import apikeys
from app import auth as auth_module
from app.apikeys import Scope
from app.auth import RETRY_AFTER_FAILURE, KeyCache, Principal
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


@dataclass
class Cached:
    """A key, its table and a cache whose clock the test moves."""

    db: Database
    cache: KeyCache
    bearer: str
    clock: list[float]

    def advance(self, seconds: float) -> None:
        self.clock[0] += seconds

    async def authenticate(self) -> Principal:
        return await self.cache.authenticate(self.bearer)

    async def degrade(self) -> None:
        """Cache the key, take PostgreSQL down and let the entry expire: one request
        waits for the failing lookup and the key is served from the cache after it."""
        await self.authenticate()
        self.db.down = True
        self.advance(5.1)
        await self.authenticate()


@pytest.fixture
def cached(monkeypatch: pytest.MonkeyPatch) -> Cached:
    key = apikeys.generate()
    db = Database(key)
    clock = [1000.0]
    # Only the cache's clock: the event loop's must run for the tests' sleeps.
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    return Cached(db, KeyCache(db.lookup, ttl=5.0), f"Bearer {key.text}", clock)


async def test_a_failed_refresh_serves_the_cached_key_and_pauses_lookups(
    cached: Cached,
) -> None:
    db = cached.db
    assert (await cached.authenticate()).tenant == "t"
    assert db.lookups == 1
    cached.advance(4.9)  # still fresh: no lookup
    await cached.authenticate()
    assert db.lookups == 1
    db.down = True
    cached.advance(0.2)  # stale: one lookup, it fails, the cached key is served
    assert (await cached.authenticate()).tenant == "t"
    assert db.lookups == 2
    for _ in range(5):  # within the pause: served without asking PostgreSQL again
        cached.advance(RETRY_AFTER_FAILURE / 10)
        await cached.authenticate()
    assert db.lookups == 2
    cached.advance(RETRY_AFTER_FAILURE)  # after it: asks again (still down, still served)
    await cached.authenticate()
    await asyncio.sleep(0.01)  # the lookup runs in the background
    assert db.lookups == 3
    db.down = False
    cached.advance(RETRY_AFTER_FAILURE + 0.01)  # back up: refreshed, fresh for the full TTL
    await cached.authenticate()
    await asyncio.sleep(0.01)
    assert db.lookups == 4
    cached.advance(4.9)
    await cached.authenticate()
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


async def test_once_degraded_requests_never_wait_for_the_lookup(cached: Cached) -> None:
    """A hung PostgreSQL holds up at most one request per key: after the first failed
    lookup the cached key is served at once while lookups go on in the background."""
    db = cached.db
    await cached.degrade()  # the second request waited for the failing lookup
    assert db.lookups == 2

    hung = asyncio.Event()
    db.hang = hung
    cached.advance(RETRY_AFTER_FAILURE + 0.01)
    with anyio.fail_after(1):  # served without waiting for the hung lookup
        for _ in range(20):
            assert (await cached.authenticate()).tenant == "t"
    await asyncio.sleep(0)
    assert db.lookups == 3  # one background lookup for all twenty requests
    hung.set()  # it fails (still down): served from the cache, still degraded
    await asyncio.sleep(0.01)
    db.hang = None
    db.down = False
    cached.advance(RETRY_AFTER_FAILURE + 0.01)
    await cached.authenticate()  # served at once; the refresh now succeeds
    await asyncio.sleep(0.01)
    assert db.lookups == 4
    # Fresh again: a revocation is seen at the next refresh, made in the request as before.
    db.record = dataclasses.replace(db.record, revoked=True)
    cached.advance(5.1)
    with pytest.raises(ApiError) as refused:
        await cached.authenticate()
    assert refused.value.status == 401
    assert db.lookups == 5


async def test_an_expired_key_waits_for_a_hung_lookup_at_most_stale_wait(
    cached: Cached,
) -> None:
    """PostgreSQL hung: the first request after the TTL must not spend its whole budget on
    the key's lookup (a 503 from a hung Redis after it came 2.5 s late). It is served from
    the cache after STALE_WAIT; the lookup goes on and its answer is kept."""
    db = cached.db
    await cached.authenticate()
    hung = asyncio.Event()
    db.hang = hung
    cached.advance(5.1)
    started = anyio.current_time()
    with anyio.fail_after(auth_module.STALE_WAIT + 0.5):
        assert (await cached.authenticate()).tenant == "t"
    assert anyio.current_time() - started >= auth_module.STALE_WAIT - 0.05
    assert db.lookups == 2
    db.record = dataclasses.replace(db.record, revoked=True)
    hung.set()  # the lookup answers late: the key was revoked meanwhile
    await asyncio.sleep(0.01)
    assert not cached.cache._refreshing
    with pytest.raises(ApiError) as refused:
        await cached.authenticate()
    assert refused.value.status == 401
    assert db.lookups == 2  # its late answer was kept, fresh for the TTL


async def test_close_cancels_background_refreshes(cached: Cached) -> None:
    """At shutdown a refresh stuck on a hung PostgreSQL is cancelled, not left running
    against a pool that is about to close."""
    db = cached.db
    await cached.degrade()
    hung = asyncio.Event()
    db.hang = hung
    cached.advance(RETRY_AFTER_FAILURE + 0.01)
    await cached.authenticate()  # starts the background lookup, which hangs
    await asyncio.sleep(0)
    assert db.lookups == 3
    (refresh,) = cached.cache._refreshing
    with anyio.fail_after(1):
        await cached.cache.close()
    assert refresh.cancelled()
    assert not cached.cache._refreshing


async def test_an_unexpected_refresh_error_stops_serving_the_cached_key(
    cached: Cached,
) -> None:
    """Only "PostgreSQL is down" keeps a degraded key in service: any other failure of
    the background lookup drops it, and the next request looks the key up itself."""
    await cached.degrade()

    async def broken(key_id: str) -> KeyRecord | None:
        raise RuntimeError("a bug in the lookup")

    cached.cache.lookup = broken
    cached.advance(RETRY_AFTER_FAILURE + 0.01)
    await cached.authenticate()  # served; the background refresh fails oddly
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="a bug"):
        await cached.authenticate()
