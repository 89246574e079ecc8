from __future__ import annotations

from decimal import Decimal

import pytest

from app.settings import Settings, SettingsError, mask_url

BASE = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://tally:s3cret@db:5432/tally",
}


def test_defaults() -> None:
    s = Settings.from_env(BASE)
    assert s.flush_interval == 10.0
    assert s.rate_limit is None
    assert s.idempotency_ttl == 86_400
    assert s.shutdown_grace == 10.0


def test_decimal_interval_and_rate_limit() -> None:
    s = Settings.from_env({**BASE, "TALLY_FLUSH_INTERVAL": "0.01", "TALLY_RATE_LIMIT": "2.5"})
    assert s.flush_interval == pytest.approx(0.01)
    assert s.rate_limit == Decimal("2.5")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TALLY_FLUSH_INTERVAL", "0"),
        ("TALLY_FLUSH_INTERVAL", "-1"),
        ("TALLY_FLUSH_INTERVAL", "ten"),
        ("TALLY_FLUSH_INTERVAL", "NaN"),
        ("TALLY_FLUSH_INTERVAL", "Infinity"),
        ("TALLY_RATE_LIMIT", "0"),
        ("TALLY_RATE_LIMIT", "fast"),
        ("TALLY_IDEMPOTENCY_TTL", "12"),
        ("TALLY_IDEMPOTENCY_TTL", "1.5"),
        ("TALLY_ROLLUP_INTERVAL", "0"),
        ("TALLY_LOG_FORMAT", "xml"),
        ("REDIS_URL", "http://localhost"),
        ("DATABASE_URL", "mysql://x"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**BASE, name: value})


@pytest.mark.parametrize("missing", ["REDIS_URL", "DATABASE_URL"])
def test_urls_required(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env(env)
    assert Settings.from_env(env, require_urls=False)


def test_rollup_age_has_a_floor_of_ten_times_the_time_outs() -> None:
    assert Settings.from_env(BASE).rollup_age == 3600.0
    # Defaults: 10 × (1 + 1.5) = 25 s; exactly at the floor is accepted.
    assert Settings.from_env({**BASE, "TALLY_ROLLUP_AGE": "25"}).rollup_age == 25.0
    with pytest.raises(SettingsError, match=r"TALLY_ROLLUP_AGE must be at least .* = 25 s"):
        Settings.from_env({**BASE, "TALLY_ROLLUP_AGE": "24.9"})
    # Shorter time-outs allow a shorter age.
    short = {**BASE, "TALLY_REDIS_TIMEOUT": "0.2", "TALLY_DATABASE_TIMEOUT": "0.3"}
    assert Settings.from_env({**short, "TALLY_ROLLUP_AGE": "5"}).rollup_age == 5.0
    with pytest.raises(SettingsError, match="TALLY_ROLLUP_AGE"):
        Settings.from_env({**short, "TALLY_ROLLUP_AGE": "4"})
    # Exact arithmetic: 10 × (0.1 + 0.2) = 3 is accepted.
    tenths = {**BASE, "TALLY_REDIS_TIMEOUT": "0.1", "TALLY_DATABASE_TIMEOUT": "0.2"}
    assert Settings.from_env({**tenths, "TALLY_ROLLUP_AGE": "3"}).rollup_age == 3.0


def test_worker_timeout_has_a_floor_above_the_heartbeat() -> None:
    assert Settings.from_env(BASE).worker_timeout == 10.0
    assert Settings.from_env({**BASE, "TALLY_WORKER_TIMEOUT": "3"}).worker_timeout == 3.0
    # Workers beat once a second: a shorter time-out would replace healthy ones.
    with pytest.raises(SettingsError, match="TALLY_WORKER_TIMEOUT must be at least 3 s"):
        Settings.from_env({**BASE, "TALLY_WORKER_TIMEOUT": "2.5"})


def test_repr_masks_secrets() -> None:
    s = Settings.from_env({**BASE, "REDIS_URL": "redis://:hunter2@cache:6379/0"})
    text = repr(s)
    assert "s3cret" not in text
    assert "hunter2" not in text
    assert "***" in text
    assert mask_url("redis://cache:6379") == "redis://cache:6379"


def test_frozen() -> None:
    s = Settings.from_env(BASE)
    with pytest.raises(AttributeError):
        s.flush_interval = 1.0  # type: ignore[misc]
