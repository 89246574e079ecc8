"""Per-API-key rate limiting (``TALLY_RATE_LIMIT`` requests per second; off when unset).

A token bucket per key in each process: no Redis round trip on the hot path. With
``tally serve --workers N`` each worker allows ``rate / N`` (the kernel spreads a client's
connections over the workers), so the server as a whole allows about ``rate``. The
bucket holds one second of requests, so short bursts up to the rate pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from decimal import Decimal


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """Token buckets by key id."""

    rate: float
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    @classmethod
    def per_process(cls, rate: Decimal, workers: int) -> RateLimiter:
        """The limiter of one of ``workers`` processes sharing ``rate``."""
        return cls(rate=float(rate) / max(1, workers))

    def check(self, key_id: str, now: float | None = None) -> float:
        """0 when the request may pass, else seconds until it could (for Retry-After)."""
        now = time.monotonic() if now is None else now
        capacity = max(1.0, self.rate)
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(tokens=capacity, updated=now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """The Retry-After header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
