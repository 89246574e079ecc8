"""Path and query parameters: identifiers, cursors, limits."""

from __future__ import annotations

import base64
import binascii
import re

from starlette.requests import Request

from app.errors import ApiError, validation_error
from app.ids import id_problem

_DIGITS = re.compile(r"[0-9]{1,4}")


def path_id(request: Request, name: str) -> str:
    """An identifier from the path (already percent-decoded once); 422 if invalid."""
    value: str = request.path_params[name]
    problem = id_problem(value)
    if problem:
        raise validation_error(name, f"{name} {problem}", code=f"invalid_{name}")
    return value


def limit_param(request: Request, default: int = 50, maximum: int = 200) -> int:
    """``?limit=`` within 1..maximum."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise validation_error("limit", f"limit must be an integer from 1 to {maximum}")
    return int(raw)


def encode_cursor(last_id: str) -> str:
    """An opaque cursor pointing after ``last_id``."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def cursor_param(request: Request) -> str | None:
    """The id a ``?cursor=`` points after, or None; 422 if it is not one of ours."""
    raw = request.query_params.get("cursor")
    if not raw:
        return None
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise validation_error("cursor", "cursor is not valid") from None
    if id_problem(decoded):
        raise validation_error("cursor", "cursor is not valid")
    return decoded


def not_found(what: str) -> ApiError:
    """The 404 for anything missing or not the caller's."""
    return ApiError(404, "not_found", f"{what} not found")
