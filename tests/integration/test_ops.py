from __future__ import annotations

import gc

from starlette.applications import Starlette

from app.application import create_app
from app.settings import Settings
from tests.conftest import running
from tests.http import client_for


async def test_health(app: Starlette) -> None:
    async with client_for(app) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["time"].endswith("Z")


async def test_ready(app: Starlette) -> None:
    async with client_for(app) as client:
        response = await client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready"}


async def test_unknown_route_and_method_use_the_error_shape(app: Starlette) -> None:
    async with client_for(app) as client:
        missing = await client.get("/nope")
        wrong = await client.delete("/health")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert set(wrong.json()["error"]) == {"code", "message", "details"}


async def test_openapi(app: Starlette) -> None:
    async with client_for(app) as client:
        response = await client.get("/openapi.json")
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert {"/health", "/ready", "/metrics"} <= set(doc["paths"])


async def test_started_app_has_frozen_its_startup_heap(settings: Settings) -> None:
    # A full collection over the start-up heap stalls every request in flight (app/heap.py).
    gc.unfreeze()
    application = create_app(settings)
    assert gc.get_freeze_count() == 0
    try:
        async with running(application):
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
