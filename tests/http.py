"""An httpx client for an in-process ASGI app."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette


def client_for(app: Starlette, key: str | None = None) -> httpx.AsyncClient:
    """An AsyncClient calling ``app`` directly, optionally with a bearer key."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tally.test", headers=headers
    )
