"""Prometheus metrics: one definition, correct with several uvicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``tally serve --workers N`` sets and cleans it),
prometheus-client keeps each process's values in files in that directory and ``/metrics``
in any worker aggregates them: counters and histograms are summed, gauges use the mode
declared below. Without it (one process, the standalone flusher), the process's own
registry is served.

Labels never carry tenant or customer ids: routes are labelled by their template
(``/api/v1/billing/{customer_id}``).
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as prom_multiprocess

from app import __version__

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Sub-millisecond to seconds: the hot path answers in hundreds of microseconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
FLUSH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every metric of Tally, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.http_requests = Counter(
            "tally_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "tally_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ingest_events = Counter(
            "tally_ingest_events_total",
            "Usage events by outcome (accepted, duplicate, conflict, rejected).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("accepted", "duplicate", "conflict", "rejected"):
            self.ingest_events.labels(outcome)  # every outcome's series from the start, at 0
        self.redis_errors = Counter(
            "tally_redis_errors_total",
            "Redis calls that failed (unavailable, timeout, OOM).",
            ["operation"],
            registry=registry,
        )
        self.database_errors = Counter(
            "tally_database_errors_total",
            "PostgreSQL calls that failed (unavailable).",
            ["operation"],
            registry=registry,
        )
        self.bill_duration = Histogram(
            "tally_bill_duration_seconds",
            "Time to compute a live bill or usage read.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.flush_cycles = Counter(
            "tally_flush_cycles_total", "Flusher cycles completed.", registry=registry
        )
        self.flush_failures = Counter(
            "tally_flush_failures_total",
            "Flusher cycles (and roll-ups: reason=rollup) that failed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.flush_duration = Histogram(
            "tally_flush_cycle_duration_seconds",
            "Duration of a flusher cycle.",
            buckets=FLUSH_BUCKETS,
            registry=registry,
        )
        self.flush_fields = Counter(
            "tally_flush_fields_total",
            "Meter fields (customer, resource type, hour) drained and committed.",
            registry=registry,
        )
        self.flush_rows = Counter(
            "tally_flush_rows_total",
            "usage_records rows written by committed flushes.",
            registry=registry,
        )
        self.flush_lag = Gauge(
            "tally_flush_lag_seconds",
            "Age of the oldest usage not yet in PostgreSQL.",
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.flush_pending_age = Gauge(
            "tally_flush_pending_age_seconds",
            "Age of the oldest drained flush not yet acknowledged (0 when none).",
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.flusher_halted = Gauge(
            "tally_flusher_halted",
            "1 when this process's flusher halted (Redis went back in time).",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.idempotency_keys = Gauge(
            "tally_idempotency_keys",
            "Idempotency keys remembered in Redis (approximate).",
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.redis_memory_used = Gauge(
            "tally_redis_memory_used_bytes",
            "Redis used_memory.",
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.redis_memory_max = Gauge(
            "tally_redis_memory_max_bytes",
            "Redis maxmemory (0 = no limit).",
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.build_info = Gauge(
            "tally_build_info",
            "Build information (always 1).",
            ["version", "python"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.bill_read_duration = self.bill_duration.labels("bill")

    def request_series(self, route: str, method: str, status: int) -> tuple[Counter, Histogram]:
        """The request counter and latency series of (route, method, status).

        Looked up once per combination (routes are templates, methods and statuses few):
        ``labels()`` checks and locks on every call, ~2.5 µs each, twice per request.
        """
        key = (route, method, status)
        found = self._request_series.get(key)
        if found is None:
            found = self._request_series[key] = (
                self.http_requests.labels(route, method, str(status)),
                self.http_duration.labels(route, method),
            )
        return found


_current: Metrics | None = None
# Tally's own registry, not prometheus_client's default one: that one also carries the
# library's process_* and python_* collectors, and CONTRACT §2 says every metric name
# starts with tally_ (and with --workers N they were missing, so /metrics changed shape).
_REGISTRY = CollectorRegistry(auto_describe=True)
_rendered = _REGISTRY  # what /metrics shows: _REGISTRY, or a test's (use_registry)


def metrics() -> Metrics:
    """The process's metrics (created on first use, on Tally's registry)."""
    global _current  # noqa: PLW0603 - prometheus metrics are process-wide by nature
    if _current is None:
        _current = Metrics(_REGISTRY)
    return _current


def use_registry(registry: CollectorRegistry) -> Metrics:
    """Replace the process's metrics with ones on ``registry`` (tests: a fresh registry)."""
    global _current, _rendered
    _current, _rendered = Metrics(registry), registry
    return _current


def multiprocess_enabled() -> bool:
    """True when values are shared through PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get(MULTIPROC_ENV))


def render() -> bytes:
    """The text exposition of this process (or of all workers in multiprocess mode)."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(_rendered)


def prepare_multiprocess_dir(path: Path) -> None:
    """Empty (or create) the multiprocess directory before workers start."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def mark_process_dead(pid: int) -> None:
    """Let live* gauges forget a worker that exited."""
    if multiprocess_enabled():
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_metrics(port: int) -> None:
    """Serve this process's metrics on ``port`` (a daemon thread)."""
    metrics()
    start_http_server(port, addr="0.0.0.0", registry=_REGISTRY)  # noqa: S104 - scraped remotely
