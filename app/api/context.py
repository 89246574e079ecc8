"""Per-request access to the process's services and the caller."""

from __future__ import annotations

from collections.abc import Collection

from starlette.requests import Request

from app.apikeys import Scope
from app.auth import Principal, require
from app.errors import ApiError
from app.ratelimit import retry_after
from app.services import Services


def services(request: Request) -> Services:
    """The process's :class:`Services` (set by the lifespan)."""
    found: Services = request.app.state.services
    return found


async def caller(request: Request, scopes: Collection[Scope]) -> Principal:
    """Authenticate the request and check its scope (401 / 403 / 503)."""
    svc = services(request)
    principal = await svc.keys.authenticate(request.headers.get("authorization"))
    if svc.rate_limiter is not None:
        wait = svc.rate_limiter.check(principal.key_id)
        if wait:
            raise ApiError(
                429,
                "rate_limited",
                "too many requests for this API key",
                headers={"Retry-After": retry_after(wait)},
            )
    require(principal, scopes)
    return principal
