"""Logging: structlog configured once per process, JSON in production, readable in dev."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """Configure structlog (and stdlib logging underneath it) for this process.

    ``fmt`` is ``json`` (one object per line, for log shippers) or ``console``.
    """
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (uvicorn, asyncpg) go to stderr at WARNING and up.
    logging.basicConfig(
        stream=sys.stderr,
        level=max(_LEVELS[level], logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
