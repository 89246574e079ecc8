"""Reading request bodies: size limit enforced while reading, strict JSON."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from app import jsonio
from app.errors import ApiError

MAX_BODY_BYTES = 2 * 1024 * 1024


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds {MAX_BODY_BYTES} bytes")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refusing with 413 as soon as more than ``limit`` bytes have arrived."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large()
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The body parsed as strict JSON (400 ``malformed_json`` when it is not)."""
    body = await read_body(request, limit)
    if not body.strip():
        raise ApiError(400, "malformed_json", "request body must be a JSON document")
    try:
        return jsonio.loads(body)
    except jsonio.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", str(exc)) from None


def json_object(value: Any, where: str = "body") -> dict[str, Any]:
    """``value`` if it is a JSON object, else a 422 naming ``where``."""
    if not isinstance(value, dict):
        raise ApiError(
            422,
            "validation_error",
            f"{where} must be a JSON object",
            [{"field": where, "message": "must be a JSON object"}],
        )
    return value
