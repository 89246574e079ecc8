from __future__ import annotations

from starlette.applications import Starlette

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
