"""The API-key cache: fresh for its TTL, stale while PostgreSQL is down, without making
every request wait for a lookup that keeps failing."""

from __future__ import annotations

import time

import pytest

from app import apikeys
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

    async def lookup(self, key_id: str) -> KeyRecord | None:
        self.lookups += 1
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
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
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
    assert db.lookups == 3
    db.down = False
    clock[0] += RETRY_AFTER_FAILURE + 0.01  # back up: refreshed, fresh for the full TTL
    await cache.authenticate(bearer)
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
