"""Entry point for uvicorn worker processes (``tally serve --workers N``)."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from app.application import create_app
from app.logs import configure_logging
from app.settings import Settings


def app_from_env() -> Starlette:
    """Factory called by uvicorn in each worker: settings from the environment.

    Workers never run the flusher: ``tally serve`` runs one per server, not one per worker.
    """
    settings = Settings.from_env(os.environ)
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings, run_flusher=False)
