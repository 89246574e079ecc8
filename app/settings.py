"""Settings: one frozen dataclass built from an injected environment mapping.

Nothing here reads ``os.environ`` at import time; callers pass the mapping
(``Settings.from_env(os.environ)``) so tests can build settings from a dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit, urlunsplit

# TALLY_ROLLUP_AGE is at least this many times the longest gap between a read's Redis and
# PostgreSQL snapshots (the two time-outs): see Settings.from_env.
ROLLUP_AGE_FACTOR = 10


# Workers write a heartbeat once a second (app.workers).
MIN_WORKER_TIMEOUT = 3.0


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (for logs and reprs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _positive_seconds(env: Mapping[str, str], name: str, default: str) -> float:
    raw = env.get(name, default).strip()
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SettingsError(f"{name} must be a decimal number of seconds, got {raw!r}") from None
    if not value.is_finite() or value <= 0:
        raise SettingsError(f"{name} must be a number of seconds > 0, got {raw!r}")
    return float(value)


def _positive_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be ≥ {minimum}, got {raw!r}")
    return value


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...], required: bool) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        if required:
            raise SettingsError(f"{name} is required (for example {schemes[0]}://127.0.0.1/...)")
        return ""
    scheme = urlsplit(raw).scheme
    if scheme not in schemes:
        raise SettingsError(
            f"{name} must start with {' or '.join(s + '://' for s in schemes)}, "
            f"got {mask_url(raw)!r}"
        )
    return raw


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, default).strip().lower() or default
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a Tally process. See the README's configuration table."""

    redis_url: str = field(repr=False)
    database_url: str = field(repr=False)
    flush_interval: float = 10.0
    rate_limit: Decimal | None = None
    idempotency_ttl: int = 86_400
    idempotency_fanout: int = 262_144
    key_cache_ttl: float = 5.0
    redis_timeout: float = 1.0
    # Each API request's budget for all its PostgreSQL work (app.repo.deadline), and each
    # statement's and connection attempt's time-out: 1.5 s leaves room under the
    # contract's "503 within 2 s".
    database_timeout: float = 1.5
    shutdown_grace: float = 10.0
    # `tally serve --workers N` replaces a worker whose event loop is silent this long.
    worker_timeout: float = 10.0
    startup_timeout: float = 30.0
    redis_max_connections: int = 64
    database_pool_size: int = 10
    rollup_age: float = 3600.0
    rollup_interval: float = 60.0
    coalesce: bool = True
    bill_coalesce: bool = True
    access_log: str = "errors"
    workers: int = 1
    log_format: str = "json"
    log_level: str = "info"

    def __repr__(self) -> str:
        shown = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("redis_url", "database_url")
        }
        inner = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return (
            f"Settings(redis_url={mask_url(self.redis_url)!r}, "
            f"database_url={mask_url(self.database_url)!r}, {inner})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, require_urls: bool = True) -> Settings:
        """Build settings from ``env``; raise :class:`SettingsError` naming the bad variable."""
        rate_raw = env.get("TALLY_RATE_LIMIT", "").strip()
        rate_limit: Decimal | None = None
        if rate_raw:
            try:
                rate_limit = Decimal(rate_raw)
            except InvalidOperation:
                raise SettingsError(
                    f"TALLY_RATE_LIMIT must be a number of requests per second, got {rate_raw!r}"
                ) from None
            if not rate_limit.is_finite() or rate_limit <= 0:
                raise SettingsError(f"TALLY_RATE_LIMIT must be > 0, got {rate_raw!r}")
        settings = cls(
            redis_url=_url(env, "REDIS_URL", ("redis", "rediss", "unix"), require_urls),
            database_url=_url(env, "DATABASE_URL", ("postgresql", "postgres"), require_urls),
            flush_interval=_positive_seconds(env, "TALLY_FLUSH_INTERVAL", "10"),
            rate_limit=rate_limit,
            idempotency_ttl=_positive_int(env, "TALLY_IDEMPOTENCY_TTL", 86_400, minimum=60),
            idempotency_fanout=_positive_int(env, "TALLY_IDEMPOTENCY_FANOUT", 262_144),
            key_cache_ttl=_positive_seconds(env, "TALLY_KEY_CACHE_TTL", "5"),
            redis_timeout=_positive_seconds(env, "TALLY_REDIS_TIMEOUT", "1"),
            database_timeout=_positive_seconds(env, "TALLY_DATABASE_TIMEOUT", "1.5"),
            shutdown_grace=_positive_seconds(env, "TALLY_SHUTDOWN_GRACE", "10"),
            worker_timeout=_positive_seconds(env, "TALLY_WORKER_TIMEOUT", "10"),
            startup_timeout=_positive_seconds(env, "TALLY_STARTUP_TIMEOUT", "30"),
            redis_max_connections=_positive_int(env, "TALLY_REDIS_MAX_CONNECTIONS", 64),
            database_pool_size=_positive_int(env, "TALLY_DATABASE_POOL_SIZE", 10),
            rollup_age=_positive_seconds(env, "TALLY_ROLLUP_AGE", "3600"),
            rollup_interval=_positive_seconds(env, "TALLY_ROLLUP_INTERVAL", "60"),
            coalesce=_choice(env, "TALLY_INGEST_COALESCE", "on", ("on", "off")) == "on",
            bill_coalesce=_choice(env, "TALLY_BILL_COALESCE", "on", ("on", "off")) == "on",
            access_log=_choice(env, "TALLY_ACCESS_LOG", "errors", ("all", "errors", "off")),
            workers=_positive_int(env, "TALLY_WORKERS", 1),
            log_format=_choice(env, "TALLY_LOG_FORMAT", "json", ("json", "console")),
            log_level=_choice(
                env, "TALLY_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
        )
        # A bill read takes its Redis snapshot, then its PostgreSQL one at most the two
        # time-outs later; a flush drained after the first must not be rolled up (into
        # rows every read counts) before the second, or the read counts it twice.
        # In Decimal: 10 × (0.1 + 0.2) is 3, not 3.0000000000000004.
        timeouts = Decimal(str(settings.redis_timeout)) + Decimal(str(settings.database_timeout))
        floor = ROLLUP_AGE_FACTOR * timeouts
        if Decimal(str(settings.rollup_age)) < floor:
            raise SettingsError(
                f"TALLY_ROLLUP_AGE must be at least {ROLLUP_AGE_FACTOR} × (TALLY_REDIS_TIMEOUT"
                f" + TALLY_DATABASE_TIMEOUT) = {floor.normalize():f} s, got {settings.rollup_age:g}"
            )
        if settings.worker_timeout < MIN_WORKER_TIMEOUT:
            # Workers beat once a second: less would replace healthy ones.
            raise SettingsError(
                f"TALLY_WORKER_TIMEOUT must be at least {MIN_WORKER_TIMEOUT:g} s,"
                f" got {settings.worker_timeout:g}"
            )
        return settings

    def with_urls(self, redis_url: str, database_url: str) -> Settings:
        """A copy pointing at other servers (``tally dev`` fills in its embedded ones)."""
        return dataclasses.replace(self, redis_url=redis_url, database_url=database_url)
