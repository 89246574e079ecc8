"""Per-request access to the process's services and the caller."""

from __future__ import annotations

from collections.abc import Collection

from starlette.requests import Request

from app.apikeys import Scope
from app.auth import Principal, require
from app.services import Services


def services(request: Request) -> Services:
    """The process's :class:`Services` (set by the lifespan)."""
    found: Services = request.app.state.services
    return found


async def caller(request: Request, scopes: Collection[Scope]) -> Principal:
    """Authenticate the request and check its scope (401 / 403 / 503)."""
    principal = await services(request).keys.authenticate(request.headers.get("authorization"))
    require(principal, scopes)
    return principal
