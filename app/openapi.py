"""The OpenAPI 3.1 document: components here, each route family adds its paths."""

from __future__ import annotations

import copy
import functools
from typing import Any

from app import __version__

ERROR = {"$ref": "#/components/schemas/Error"}


def error_responses(*statuses: int) -> dict[str, Any]:
    """Response objects for the given error statuses, all with the Error schema."""
    text = {
        400: "Malformed JSON",
        401: "Missing or unknown API key",
        403: "Wrong scope",
        404: "Not found",
        413: "Body too large",
        422: "Validation error",
        429: "Rate limited",
        503: "Redis or PostgreSQL unavailable",
    }
    return {
        str(s): {"description": text[s], "content": {"application/json": {"schema": ERROR}}}
        for s in statuses
    }


COMPONENTS: dict[str, Any] = {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "details"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "array", "items": {"type": "object"}},
                    },
                }
            },
        },
        "Identifier": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$",
        },
    },
}

OPS_PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "summary": "Liveness",
            "operationId": "health",
            "responses": {
                "200": {
                    "description": "The process runs",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["status", "time"],
                                "properties": {
                                    "status": {"const": "healthy"},
                                    "time": {"type": "string"},
                                },
                            }
                        }
                    },
                }
            },
        }
    },
    "/ready": {
        "get": {
            "summary": "Readiness: Redis, PostgreSQL, migrations, flusher",
            "operationId": "ready",
            "responses": {
                "200": {
                    "description": "Ready",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "503": {
                    "description": "Not ready",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
}

# Route modules register their paths here at import (plain data, no I/O).
_PATHS: list[dict[str, Any]] = [OPS_PATHS]


def register_paths(paths: dict[str, Any]) -> None:
    """Add a route family's path items to the document."""
    _PATHS.append(paths)
    openapi_document.cache_clear()


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once)."""
    paths: dict[str, Any] = {}
    for group in _PATHS:
        paths.update(copy.deepcopy(group))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tally",
            "version": __version__,
            "description": "Usage metering and live billing.",
        },
        "components": COMPONENTS,
        "paths": paths,
    }
