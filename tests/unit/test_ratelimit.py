from __future__ import annotations

from decimal import Decimal

from app.ratelimit import RateLimiter, retry_after


def test_bucket_allows_the_rate_and_refills() -> None:
    limiter = RateLimiter(rate=2.0)
    assert limiter.check("k", now=0.0) == 0
    assert limiter.check("k", now=0.0) == 0
    wait = limiter.check("k", now=0.0)
    assert wait == 0.5
    assert retry_after(wait) == "1"
    assert limiter.check("other", now=0.0) == 0  # per key
    assert limiter.check("k", now=0.5) == 0  # one token back after half a second


def test_workers_share_the_rate() -> None:
    limiter = RateLimiter.per_process(Decimal("10"), workers=2)
    passed = sum(1 for _ in range(20) if limiter.check("k", now=0.0) == 0)
    assert passed == 5


def test_slow_rate_still_allows_one() -> None:
    limiter = RateLimiter(rate=0.5)
    assert limiter.check("k", now=0.0) == 0
    assert limiter.check("k", now=0.1) > 1
