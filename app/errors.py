"""The API's error shape and the handlers that produce it.

Every error body is ``{"error": {"code", "message", "details"}}``; nothing a client sends
can produce a 500, and a dependency outage is a 503 answered within the timeouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.coalescer import CoalescerStoppedError
from app.hotpath.ingest import BoundBusyError
from app.hotpath.redis_errors import RedisUnavailableError
from app.metrics import metrics
from app.repo.errors import DatabaseUnavailableError
from app.responses import JSONResponse

log = structlog.get_logger("tally.errors")


class ApiError(Exception):
    """An error answered to the client as-is."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Render the contract's error body."""
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return JSONResponse(body, status_code=status, headers=headers)


def validation_error(field: str, message: str, code: str = "validation_error") -> ApiError:
    """A 422 naming ``field``."""
    return ApiError(422, code, message, [{"field": field, "message": message}])


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404:
        message = "not found"
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _unavailable(request: Request, exc: Exception) -> Response:
    which = "redis" if isinstance(exc, RedisUnavailableError) else "postgresql"
    endpoint = request.scope.get("endpoint")
    operation = getattr(endpoint, "__name__", "unknown")
    counter = metrics().redis_errors if which == "redis" else metrics().database_errors
    counter.labels(operation).inc()
    log.warning(
        "dependency.unavailable",
        dependency=which,
        error=str(exc),
        path=request.scope.get("route_name", ""),
    )
    return error_response(
        503,
        "service_unavailable",
        f"{which} is unavailable, retry later",
        headers={"Retry-After": "1"},
    )


async def _stopping(request: Request, exc: Exception) -> Response:
    log.warning("request.stopping", error=str(exc))
    return error_response(
        503, "service_unavailable", "the service is stopping, retry", headers={"Retry-After": "1"}
    )


async def _bound_busy(request: Request, exc: Exception) -> Response:
    log.warning("ingest.bound_busy", error=str(exc))
    return error_response(
        503,
        "service_unavailable",
        "the hour's total is being updated, retry later",
        headers={"Retry-After": "1"},
    )


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("http.internal_error", error_type=type(exc).__name__)
    return error_response(500, "internal_error", "internal server error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    RedisUnavailableError: _unavailable,
    DatabaseUnavailableError: _unavailable,
    BoundBusyError: _bound_busy,
    CoalescerStoppedError: _stopping,
    Exception: _internal,
}
