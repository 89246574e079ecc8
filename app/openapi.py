"""The OpenAPI 3.1 document: components here, each route family adds its paths.

Request schemas are as strict as the handlers (unknown fields refused) and response schemas
list every key a handler writes without forbidding more, so a fuzzer's conformance checks
hold both ways. Limits a schema cannot say (time windows, ordered tiers) are in the
descriptions; the handlers answer 422 for them.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from app import __version__
from app.decimal_patterns import decimal_pattern
from app.hotpath.events import MAX_IDEMPOTENCY_KEY, MAX_METADATA_BYTES
from app.plans import (
    MAX_PERCENT,
    MAX_STRING_NUMBER,
    MODELS,
    MONEY_DIGITS,
    PERCENT_PLACES,
    PRICE_PLACES,
    QUANTITY_DIGITS,
    QUANTITY_PLACES,
)
from app.quantities import MAX_EVENT_UNITS, MICRO
from app.text import EMAIL_FORBIDDEN

ERROR = {"$ref": "#/components/schemas/Error"}


def schema_ref(name: str) -> dict[str, Any]:
    """A reference to ``components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}"}


_RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
# Which error responses carry a header, and whether it is always there (CONTRACT §2: a 429
# always has Retry-After; the 503 handler sends it too).
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {**_RETRY_AFTER, "required": True}},
    503: {"Retry-After": _RETRY_AFTER},
}


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
    responses: dict[str, Any] = {}
    for s in statuses:
        response: dict[str, Any] = {
            "description": text[s],
            "content": {"application/json": {"schema": ERROR}},
        }
        if s in _ERROR_HEADERS:
            response["headers"] = copy.deepcopy(_ERROR_HEADERS[s])
        responses[str(s)] = response
    return responses


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _closed(properties: dict[str, Any], *required: str, **extra: Any) -> dict[str, Any]:
    """A request object: unknown fields are refused with 422, as the handlers do."""
    return {
        "type": "object",
        "required": list(required),
        "properties": properties,
        "additionalProperties": False,
        **extra,
    }


def _open(properties: dict[str, Any], *required: str, **extra: Any) -> dict[str, Any]:
    """A response object: every key listed, but clients must ignore keys added later."""
    shape: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:  # no `required: []` noise
        shape["required"] = list(required)
    return shape


_PLAIN_DECIMAL = r"^[0-9]+(\.[0-9]+)?$"
_TEXT = {"type": "string", "minLength": 1, "maxLength": 256}
_QUANTITY_IN = schema_ref("PlanQuantity")
_PRICE_IN = schema_ref("PlanPrice")
_MONEY_IN = schema_ref("PlanMoney")
_DECIMAL = schema_ref("DecimalString")
_MONEY = schema_ref("Money")
_TIME = schema_ref("Timestamp")
_ID = schema_ref("Identifier")


def _power_of_ten(limit: int) -> int:
    below = len(str(limit)) - 1
    if 10**below != limit:
        raise ValueError(f"{limit} is not a power of ten")
    return below


def _decimal_input(
    description: str,
    *,
    below: int,
    places: int | None,
    positive: bool = False,
    inclusive: bool = False,
    max_length: int | None = MAX_STRING_NUMBER,
    trailing_zeros_free: bool = True,
) -> dict[str, Any]:
    """An exact decimal in a request: a JSON number, or a decimal string the pattern states.

    The bounds are the handler's: > 0 or >= 0, below 10**below (or up to it, ``inclusive``).
    Digits after the point are stated for strings only: ``multipleOf`` on a JSON number is
    evaluated in binary floating point, so the handler alone judges a number's places.
    """
    lower = "exclusiveMinimum" if positive else "minimum"
    upper = "maximum" if inclusive else "exclusiveMaximum"
    text: dict[str, Any] = {
        "type": "string",
        "pattern": decimal_pattern(
            below=below,
            places=places,
            inclusive=inclusive,
            positive=positive,
            trailing_zeros_free=trailing_zeros_free,
        ),
    }
    if max_length is not None:
        text["maxLength"] = max_length
    return {
        "anyOf": [{"type": "number", lower: 0, upper: 10**below}, text],
        "description": description,
    }


def _priced(model: str, fields: dict[str, Any], *required: str) -> dict[str, Any]:
    """One model's price in a plan body: only the fields that model charges are accepted."""
    return _closed(
        {
            "resource_type": _ID,
            "model": {"const": model},
            "free_units": {**_QUANTITY_IN, "description": "Units not billed (default 0)"},
            **fields,
        },
        "resource_type",
        "model",
        *required,
        title=model,
    )


def _tiers_in(tier: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": 250,
        "items": tier,
        "description": "Ascending `up_to`; the last tier, and only it, has `up_to: null`.",
    }


_UP_TO_IN = {
    "anyOf": [_QUANTITY_IN, {"type": "null"}],
    "description": "Inclusive upper bound of the tier; null (no bound) on the last tier only",
}
_TIER_IN = _closed({"up_to": _UP_TO_IN, "unit_price": _PRICE_IN, "flat_fee": _PRICE_IN}, "up_to")
# A stair step charges only flat fees: a unit price there is refused (app.plans).
_STAIR_IN = _closed({"up_to": _UP_TO_IN, "flat_fee": _PRICE_IN}, "up_to")

# Plan numbers (app.plans): a JSON number or a decimal string of at most 64 characters;
# zeros at the end of the fraction do not count as places ("20.000" has none).
_PLAN_SCHEMAS: dict[str, Any] = {
    "PlanQuantity": _decimal_input(
        f"Units: >= 0, below 10^{QUANTITY_DIGITS}, at most {QUANTITY_PLACES} digits after the "
        "point",
        below=QUANTITY_DIGITS,
        places=QUANTITY_PLACES,
    ),
    "PlanPrice": _decimal_input(
        f"A price per unit or a flat fee: >= 0, below 10^{MONEY_DIGITS}, at most "
        f"{PRICE_PLACES} digits after the point",
        below=MONEY_DIGITS,
        places=PRICE_PLACES,
    ),
    "PlanMoney": _decimal_input(
        f"An amount of money: >= 0, below 10^{MONEY_DIGITS}, at most the plan currency's "
        "minor-unit digits after the point (USD 2, JPY 0)",
        below=MONEY_DIGITS,
        places=None,
    ),
    "PriceInput": {
        "oneOf": [
            _priced("per_unit", {"unit_price": _PRICE_IN}, "unit_price"),
            _priced("graduated", {"tiers": _tiers_in(_TIER_IN)}, "tiers"),
            _priced("volume", {"tiers": _tiers_in(_TIER_IN)}, "tiers"),
            _priced(
                "package",
                {
                    "package_size": _decimal_input(
                        f"Units per package: > 0, below 10^{QUANTITY_DIGITS}, at most "
                        f"{QUANTITY_PLACES} digits after the point",
                        below=QUANTITY_DIGITS,
                        places=QUANTITY_PLACES,
                        positive=True,
                    ),
                    "package_price": _PRICE_IN,
                },
                "package_size",
                "package_price",
            ),
            _priced("stair_step", {"tiers": _tiers_in(_STAIR_IN)}, "tiers"),
        ],
        "description": "How one resource type is priced; resource types are unique in a plan.",
    },
    "DiscountInput": {
        "oneOf": [
            _closed(
                {
                    "description": _TEXT,
                    "percent": _decimal_input(
                        f"0 to {MAX_PERCENT}, at most {PERCENT_PLACES} digits after the point",
                        below=_power_of_ten(MAX_PERCENT),
                        places=PERCENT_PLACES,
                        inclusive=True,
                    ),
                },
                "percent",
            ),
            _closed({"description": _TEXT, "amount": _MONEY_IN}, "amount"),
        ],
        "description": "Exactly one of `percent` and `amount`; applied in order.",
    },
    "PlanInput": _closed(
        {
            "plan_id": {**_ID, "description": "If given, must equal the plan id in the path"},
            "name": {**_TEXT, "description": "Defaults to the plan id"},
            "currency": {
                "type": "string",
                "pattern": "^[A-Z]{3}$",
                "description": "ISO 4217 code, upper case",
            },
            "prices": {"type": "array", "maxItems": 1000, "items": schema_ref("PriceInput")},
            "fixed_fees": {
                "type": "array",
                "maxItems": 100,
                "items": _closed(
                    {"description": _TEXT, "amount": _MONEY_IN}, "description", "amount"
                ),
            },
            "discounts": {
                "type": "array",
                "maxItems": 100,
                "items": schema_ref("DiscountInput"),
            },
            "minimum_commitment": _MONEY_IN,
        },
        "currency",
        "prices",
        description=(
            "A pricing plan (CONTRACT §3). Numbers are JSON numbers or decimal strings, "
            "exact, not negative; money has at most the currency's minor-unit digits. "
            "An invalid plan is refused with 422 `invalid_plan`, every bad field named "
            "in `details`."
        ),
    ),
    "Plan": _open(
        {
            "plan_id": _ID,
            "name": {"type": "string"},
            "currency": {"type": "string"},
            "prices": {
                "type": "array",
                "items": _open(
                    {
                        "resource_type": _ID,
                        "model": {"enum": list(MODELS)},
                        "free_units": _DECIMAL,
                        "unit_price": _DECIMAL,
                        "package_size": _DECIMAL,
                        "package_price": _DECIMAL,
                        "tiers": {
                            "type": "array",
                            "items": _open(
                                {
                                    "up_to": _nullable(_DECIMAL),
                                    "unit_price": _DECIMAL,
                                    "flat_fee": _DECIMAL,
                                },
                                "up_to",
                                "flat_fee",
                            ),
                        },
                    },
                    "resource_type",
                    "model",
                    "free_units",
                ),
            },
            "fixed_fees": {
                "type": "array",
                "items": _open(
                    {"description": {"type": "string"}, "amount": _MONEY}, "description", "amount"
                ),
            },
            "discounts": {
                "type": "array",
                # No description on a discount that was given none (an empty one is not
                # valid input, and the stored plan must parse back).
                "items": _open(
                    {"description": {"type": "string"}, "percent": _DECIMAL, "amount": _MONEY}
                ),
            },
            "minimum_commitment": _MONEY,
        },
        "plan_id",
        "name",
        "currency",
        "prices",
        "fixed_fees",
        "discounts",
        "minimum_commitment",
        description="A stored plan, normalised: every default filled in, numbers as strings. "
        "It can be PUT back unchanged.",
    ),
    "PlanList": _open(
        {
            "data": {"type": "array", "items": schema_ref("Plan")},
            "next_cursor": _nullable({"type": "string"}),
        },
        "data",
        "next_cursor",
    ),
}

_EVENT_SCHEMAS: dict[str, Any] = {
    # Every written digit after the point counts here ("1.0000000" has 7): app.quantities.
    "Quantity": _decimal_input(
        f"Exact decimal > 0 and at most {MAX_EVENT_UNITS}, at most {_power_of_ten(MICRO)} "
        "digits after the point: a JSON number or a decimal string",
        below=_power_of_ten(MAX_EVENT_UNITS),
        places=_power_of_ten(MICRO),
        positive=True,
        inclusive=True,
        max_length=None,
        trailing_zeros_free=False,
    ),
    "UsageEvent": _closed(
        {
            "customer_id": _ID,
            "resource_type": _ID,
            "quantity": schema_ref("Quantity"),
            "timestamp": {
                **_nullable({"type": "string", "format": "date-time"}),
                "description": (
                    "RFC 3339 with an offset, from 35 days in the past to 5 minutes in the "
                    "future; omitted or null: the server's time"
                ),
            },
            "idempotency_key": {
                **_nullable(
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_IDEMPOTENCY_KEY,
                        "pattern": r"^[\x20-\x7E]+$",
                    }
                ),
                "description": "Printable ASCII; may come in the Idempotency-Key header instead",
            },
            "metadata": {
                **_nullable({"type": "object"}),
                "description": f"Stored with nothing; at most {MAX_METADATA_BYTES} bytes as JSON",
            },
        },
        "customer_id",
        "resource_type",
        "quantity",
    ),
    "BatchRequest": _closed(
        {
            "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1000,
                # Any item is taken: one that is not a valid event is rejected on its own
                # in `results`, so the schema must not call such a request invalid.
                "items": {
                    "anyOf": [
                        schema_ref("UsageEvent"),
                        {"description": "Anything else: answered as a rejected result"},
                    ]
                },
            }
        },
        "events",
    ),
    "IngestStatus": _open(
        {"status": {"enum": ["accepted", "duplicate"]}},
        "status",
    ),
    "BatchResult": _open(
        {
            "index": {"type": "integer", "minimum": 0},
            "status": {"enum": ["accepted", "duplicate", "conflict", "rejected"]},
            "error": _open(
                {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                },
                "code",
                "message",
                description="Present on conflict and rejected results",
            ),
        },
        "index",
        "status",
    ),
    "BatchResponse": _open(
        {
            "accepted": {"type": "integer", "minimum": 0},
            "duplicates": {"type": "integer", "minimum": 0},
            "conflicts": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "results": {
                "type": "array",
                "items": schema_ref("BatchResult"),
                "description": "One per event, in order",
            },
        },
        "accepted",
        "duplicates",
        "rejected",
        "results",
    ),
}

_READ_SCHEMAS: dict[str, Any] = {
    "UsageLine": _open(
        {
            "type": {"const": "usage"},
            "resource_type": _ID,
            "model": {
                "enum": [*MODELS, None],
                "description": "null when the plan does not price this resource type",
            },
            "quantity": _DECIMAL,
            "amount": _MONEY,
            "tiers": {
                "type": "array",
                "items": _open(
                    {
                        "from": _DECIMAL,
                        "up_to": _nullable(_DECIMAL),
                        "quantity": _DECIMAL,
                        "unit_price": _DECIMAL,
                        "flat_fee": _DECIMAL,
                        "amount": _DECIMAL,
                    },
                    "from",
                    "up_to",
                    "quantity",
                    "unit_price",
                    "flat_fee",
                    "amount",
                ),
                "description": "The tiers charged (graduated and volume models)",
            },
        },
        "type",
        "resource_type",
        "model",
        "quantity",
        "amount",
    ),
    "FixedFeeLine": _open(
        {"type": {"const": "fixed_fee"}, "description": {"type": "string"}, "amount": _MONEY},
        "type",
        "description",
        "amount",
    ),
    "Bill": _open(
        {
            "customer_id": _ID,
            "currency": {**_nullable({"type": "string"}), "description": "null without a plan"},
            "estimated_bill": {"type": "number", "description": "Equal to total"},
            "plan_id": _nullable(_ID),
            "period": _open({"start": _TIME, "end": _TIME}, "start", "end"),
            "as_of": _TIME,
            "lines": {
                "type": "array",
                "items": {
                    "oneOf": [schema_ref("UsageLine"), schema_ref("FixedFeeLine")],
                    "discriminator": {
                        "propertyName": "type",
                        "mapping": {
                            "usage": "#/components/schemas/UsageLine",
                            "fixed_fee": "#/components/schemas/FixedFeeLine",
                        },
                    },
                },
            },
            "subtotal": _MONEY,
            "discount": _MONEY,
            "minimum_topup": _MONEY,
            "total": _MONEY,
        },
        "customer_id",
        "currency",
        "estimated_bill",
        "plan_id",
        "period",
        "as_of",
        "lines",
        "subtotal",
        "discount",
        "minimum_topup",
        "total",
    ),
    "UsageSeries": _open(
        {
            "customer_id": _ID,
            "granularity": {"enum": ["hour", "day"]},
            "series": {
                "type": "array",
                "items": _open(
                    {
                        "resource_type": _ID,
                        "points": {
                            "type": "array",
                            "items": _open(
                                {"start": _TIME, "quantity": _DECIMAL}, "start", "quantity"
                            ),
                        },
                    },
                    "resource_type",
                    "points",
                ),
            },
        },
        "customer_id",
        "granularity",
        "series",
    ),
    "Customer": _open(
        {
            "customer_id": _ID,
            "name": _nullable({"type": "string"}),
            "email": _nullable({"type": "string"}),
            "plan_id": _nullable(_ID),
            "created_at": _TIME,
            "updated_at": _TIME,
        },
        "customer_id",
        "name",
        "email",
        "plan_id",
        "created_at",
        "updated_at",
    ),
    "CustomerInput": _closed(
        {
            "customer_id": {**_ID, "description": "If given, must equal the path's"},
            "name": _nullable({"type": "string", "minLength": 1, "maxLength": 256}),
            "email": _nullable(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 254,
                    # The characters listed, not \S: "whitespace" differs between regex engines.
                    "pattern": f"^[^{EMAIL_FORBIDDEN}]*@[^{EMAIL_FORBIDDEN}]*$",
                    "description": "Contains an @; no whitespace (Unicode's or ECMA-262's), no NUL",
                }
            ),
            "plan_id": {
                **_nullable(_ID),
                "description": "A plan of this tenant (else 422 unknown_plan); null clears it",
            },
        },
        description="Every field optional: an omitted field keeps its value, null clears it.",
    ),
    "CustomerList": _open(
        {
            "data": {"type": "array", "items": schema_ref("Customer")},
            "next_cursor": {
                **_nullable({"type": "string"}),
                "description": "Pass as `cursor` for the next page; null on the last page",
            },
        },
        "data",
        "next_cursor",
    ),
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
        "DecimalString": {
            "type": "string",
            "pattern": _PLAIN_DECIMAL,
            "description": 'Exact, trailing zeros trimmed ("6.5", "35", "0.1")',
        },
        "Money": {
            "type": "string",
            "pattern": _PLAIN_DECIMAL,
            "description": 'The currency\'s minor-unit digits ("157.50", JPY "1200"); "0" '
            "without a plan",
        },
        "Timestamp": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"},
        **_EVENT_SCHEMAS,
        **_READ_SCHEMAS,
        **_PLAN_SCHEMAS,
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

# Route families may register more paths (plain data, no I/O); the /api/v1 paths are added
# by openapi_document() itself.
_PATHS: list[dict[str, Any]] = [OPS_PATHS]


def register_paths(paths: dict[str, Any]) -> None:
    """Add a route family's path items to the document."""
    _PATHS.append(paths)
    openapi_document.cache_clear()


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once)."""
    # Imported here, not at the top: app.api.openapi_paths builds on this module's helpers.
    from app.api.openapi_paths import API_PATHS

    paths: dict[str, Any] = {}
    for group in (*_PATHS, API_PATHS):
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
