"""Prometheus metrics (filled in by the observability work; the flusher can serve them)."""

from __future__ import annotations

from prometheus_client import start_http_server


def serve_metrics(port: int) -> None:
    """Serve this process's metrics on ``port`` (a daemon thread)."""
    start_http_server(port, addr="0.0.0.0")  # noqa: S104 - scraped from other hosts
