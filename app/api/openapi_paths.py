"""OpenAPI path items of every ``/api/v1`` route (plain data; ``app.openapi`` adds them).

Each operation lists every status its handler can answer: the ones the handler raises, 401
and 503 from authentication (a key not in the cache cannot be checked while PostgreSQL is
down), 413 and 400 where a body is read, and 429 everywhere because rate limiting may be on.
"""

from __future__ import annotations

from typing import Any

from app.openapi import error_responses, schema_ref

# YYYY-MM from 1970-01 to 9998-12 (the handler needs the month after the period).
_PERIOD_PATTERN = (
    "^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
)

_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
# Statuses every /api/v1 operation can answer, whatever it does.
_ALWAYS = (401, 403, 429, 503)
_WITH_BODY = (400, 413, 422)


def _json(description: str, schema: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema_ref(schema)}},
        **extra,
    }


def _body(schema: str, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema_ref(schema)}},
    }


def _path_id(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what}'s id (one path segment, percent-encoded as needed)",
        "schema": schema_ref("Identifier"),
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Any],
    errors: tuple[int, ...],
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "security": _SECURITY,
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = body
    operation["responses"] = {**responses, **error_responses(*sorted({*errors, *_ALWAYS}))}
    return operation


_CUSTOMER_ID = _path_id("customer_id", "customer")
_PLAN_ID = _path_id("plan_id", "plan")
_CURSOR = _query(
    "cursor",
    "The `next_cursor` of the previous page",
    {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"},
)
_PAGE = [
    _query(
        "limit",
        "Page size",
        {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    ),
    _CURSOR,
]
_PLAN_PAGE = [
    _query(
        "limit",
        "Page size (by default every plan, up to 1000)",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000},
    ),
    _CURSOR,
]

_INGEST_SCOPE = "Scope `ingest` or `admin`."
_READ_SCOPE = (
    "Scope `read` or `admin`; a `read` key bound to one customer gets 404 for any other. "
    "404 also when the customer has neither a record nor any usage in the tenant."
)
_ADMIN_SCOPE = "Scope `admin`."

USAGE_PATHS: dict[str, Any] = {
    "/api/v1/usage": {
        "post": _operation(
            "ingestUsage",
            "usage",
            "Count one usage event exactly once",
            {
                "202": _json("Counted, exactly once", "IngestStatus"),
                "200": _json(
                    "Same idempotency key, same event: nothing counted again",
                    "IngestStatus",
                    headers={
                        "Idempotent-Replayed": {
                            "required": True,
                            "schema": {"type": "string", "const": "true"},
                        }
                    },
                ),
            },
            _WITH_BODY,
            parameters=[
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Instead of (or equal to) the body's `idempotency_key`",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            ],
            body=_body("UsageEvent", "One event"),
            description=(
                f"{_INGEST_SCOPE} The idempotency key is remembered per tenant; the same key "
                "with a different event is 422 `idempotency_conflict` and counts nothing. "
                "An event taking its (customer, resource type, hour) past 10^12 units is 422 "
                "`quantity_overflow`, flushed units included. Once the customer's month holds "
                "about 10^12 units of the resource type, deciding that reads the hour from "
                "PostgreSQL (once per hour): while it is down, such an event is 503."
            ),
        )
    },
    "/api/v1/usage/batch": {
        "post": _operation(
            "ingestUsageBatch",
            "usage",
            "Count up to 1000 events in one atomic step",
            {"202": _json("One result per event, in order", "BatchResponse")},
            _WITH_BODY,
            body=_body("BatchRequest", "1 to 1000 events; the body at most 2 MiB"),
            description=(
                f"{_INGEST_SCOPE} Valid events are applied together; each invalid one is "
                "rejected on its own. Each event carries its own `idempotency_key` (the "
                "Idempotency-Key header is refused with 422). More than 1000 events: 422; "
                "a body over 2 MiB: 413."
            ),
        )
    },
    "/api/v1/usage/{customer_id}": {
        "get": _operation(
            "getUsage",
            "usage",
            "Exact usage per resource type and hour or day",
            {"200": _json("Usage series (buckets without usage may be omitted)", "UsageSeries")},
            (404, 422),
            parameters=[
                _CUSTOMER_ID,
                _query(
                    "from",
                    "Start, inclusive (default: the start of the current month, UTC)",
                    {"type": "string", "format": "date-time"},
                ),
                _query(
                    "to",
                    "End, exclusive (default: the end of the current hour); after `from`, "
                    "at most 100 days later",
                    {"type": "string", "format": "date-time"},
                ),
                _query(
                    "granularity",
                    "Bucket size",
                    {"type": "string", "enum": ["hour", "day"], "default": "day"},
                ),
            ],
            description=(
                f"{_READ_SCOPE} An hour counts when its start lies in [from, to); points are "
                "labelled by their UTC hour or day start."
            ),
        )
    },
}

BILLING_PATHS: dict[str, Any] = {
    "/api/v1/billing/{customer_id}": {
        "get": _operation(
            "getBill",
            "billing",
            "The live bill: exact usage so far, priced against the customer's plan",
            {"200": _json("The bill", "Bill")},
            (404, 422),
            parameters=[
                _CUSTOMER_ID,
                _query(
                    "period",
                    "Calendar month in UTC (default: the current month)",
                    {
                        "type": "string",
                        "pattern": _PERIOD_PATTERN,
                    },
                ),
            ],
            description=(
                f'{_READ_SCOPE} Without a plan: usage lines with amount "0" and `plan_id` '
                "and `currency` null."
            ),
        )
    },
}

CATALOG_PATHS: dict[str, Any] = {
    "/api/v1/customers": {
        "get": _operation(
            "listCustomers",
            "customers",
            "Customers by id, a page at a time",
            {"200": _json("A page of customers", "CustomerList")},
            (422,),
            parameters=_PAGE,
            description=_ADMIN_SCOPE,
        )
    },
    "/api/v1/customers/{customer_id}": {
        "get": _operation(
            "getCustomer",
            "customers",
            "One customer",
            {"200": _json("The customer", "Customer")},
            (404, 422),
            parameters=[_CUSTOMER_ID],
            description=_ADMIN_SCOPE,
        ),
        "put": _operation(
            "putCustomer",
            "customers",
            "Create or update a customer",
            {
                "200": _json("Updated", "Customer"),
                "201": _json("Created", "Customer"),
            },
            _WITH_BODY,
            parameters=[_CUSTOMER_ID],
            body=_body("CustomerInput", "The fields to set"),
            description=f"{_ADMIN_SCOPE} An unknown `plan_id` is 422 `unknown_plan`.",
        ),
    },
    "/api/v1/plans": {
        "get": _operation(
            "listPlans",
            "plans",
            "Plans by id: all of them unless `limit` asks for pages",
            {"200": _json("The plans (or a page of them)", "PlanList")},
            (422,),
            parameters=_PLAN_PAGE,
            description=_ADMIN_SCOPE,
        )
    },
    "/api/v1/plans/{plan_id}": {
        "get": _operation(
            "getPlan",
            "plans",
            "One plan",
            {"200": _json("The plan", "Plan")},
            (404, 422),
            parameters=[_PLAN_ID],
            description=_ADMIN_SCOPE,
        ),
        "put": _operation(
            "putPlan",
            "plans",
            "Create or replace a plan",
            {
                "200": _json("Replaced", "Plan"),
                "201": _json("Created", "Plan"),
            },
            _WITH_BODY,
            parameters=[_PLAN_ID],
            body=_body("PlanInput", "The plan (CONTRACT §3)"),
            description=(
                f"{_ADMIN_SCOPE} Only `currency` and `prices` are required. An invalid plan "
                "is 422 `invalid_plan` with every bad field named in `details`."
            ),
        ),
    },
}

API_PATHS: dict[str, Any] = {**USAGE_PATHS, **BILLING_PATHS, **CATALOG_PATHS}
