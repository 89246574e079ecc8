"""Customers and plans (scope admin)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from app import jsonio
from app.api.body import json_object, read_json
from app.api.context import caller, services
from app.api.params import cursor_param, encode_cursor, limit_param, not_found, path_id
from app.apikeys import Scope
from app.errors import ApiError, validation_error
from app.ids import id_problem
from app.plans import PlanValidationError, in_plan_order, parse_plan, plan_to_json
from app.repo import customers as repo
from app.repo.customers import CustomerRecord
from app.responses import JSONResponse
from app.text import is_email, text_problem
from app.timestamps import format_utc

ADMIN = (Scope.ADMIN,)
_CUSTOMER_FIELDS = {"name", "email", "plan_id"}


def _customer_json(record: CustomerRecord) -> dict[str, Any]:
    return {
        "customer_id": record.customer_id,
        "name": record.name,
        "email": record.email,
        "plan_id": record.plan_id,
        "created_at": format_utc(record.created_at),
        "updated_at": format_utc(record.updated_at),
    }


def _text_field(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body[name]
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise validation_error(name, f"{name} must be a string of 1 to {limit} characters")
    problem = text_problem(value)
    if problem:
        raise validation_error(name, f"{name} {problem}")
    return value


async def put_customer(request: Request) -> Response:
    """Create or update a customer; omitted fields keep their value, null clears one."""
    principal = await caller(request, ADMIN)
    customer_id = path_id(request, "customer_id")
    body = json_object(await read_json(request))
    unknown = sorted(set(body) - _CUSTOMER_FIELDS - {"customer_id"})
    if unknown:
        raise validation_error(unknown[0], f"{unknown[0]} is not a known field", "unknown_field")
    if "customer_id" in body and body["customer_id"] != customer_id:
        raise validation_error("customer_id", "customer_id differs from the path")
    changes: dict[str, str | None] = {}
    if "name" in body:
        changes["name"] = _text_field(body, "name", 256)
    if "email" in body:
        email = _text_field(body, "email", 254)
        if email is not None and not is_email(email):
            raise validation_error("email", "email must be an email address")
        changes["email"] = email
    svc = services(request)
    if "plan_id" in body:
        plan_id = body["plan_id"]
        known = plan_id is None or (
            id_problem(plan_id) is None
            and await repo.plan_exists(svc.pool, principal.tenant, plan_id)
        )
        if not known:
            raise validation_error(
                "plan_id", "plan_id is not a plan of this tenant", "unknown_plan"
            )
        changes["plan_id"] = plan_id
    record, created = await repo.upsert_customer(svc.pool, principal.tenant, customer_id, changes)
    return JSONResponse(_customer_json(record), status_code=201 if created else 200)


async def get_customer(request: Request) -> Response:
    """One customer."""
    principal = await caller(request, ADMIN)
    customer_id = path_id(request, "customer_id")
    record = await repo.get_customer(services(request).pool, principal.tenant, customer_id)
    if record is None:
        raise not_found("customer")
    return JSONResponse(_customer_json(record))


async def list_customers(request: Request) -> Response:
    """Customers by id, a page at a time (``next_cursor`` is null on the last page)."""
    principal = await caller(request, ADMIN)
    limit = limit_param(request)
    records = await repo.list_customers(
        services(request).pool, principal.tenant, cursor_param(request), limit + 1
    )
    page = records[:limit]
    more = len(records) > limit
    return JSONResponse(
        {
            "data": [_customer_json(r) for r in page],
            "next_cursor": encode_cursor(page[-1].customer_id) if more else None,
        }
    )


async def put_plan(request: Request) -> Response:
    """Create or replace a plan (validated; 422 names the field)."""
    principal = await caller(request, ADMIN)
    plan_id = path_id(request, "plan_id")
    body = await read_json(request)
    try:
        plan = parse_plan(plan_id, body)
    except PlanValidationError as exc:
        raise ApiError(422, "invalid_plan", "the plan is not valid", exc.details) from None
    document = plan_to_json(plan)
    created = await repo.upsert_plan(
        services(request).pool, principal.tenant, plan_id, jsonio.dumps(document).decode()
    )
    return JSONResponse(document, status_code=201 if created else 200)


async def get_plan(request: Request) -> Response:
    """One plan."""
    principal = await caller(request, ADMIN)
    plan_id = path_id(request, "plan_id")
    body = await repo.get_plan(services(request).pool, principal.tenant, plan_id)
    if body is None:
        raise not_found("plan")
    # As the PUT that stored it answered it, members in the same order (jsonb's is its own).
    return JSONResponse(in_plan_order(jsonio.loads(body)))


PLANS_PAGE = 1000


async def list_plans(request: Request) -> Response:
    """Plans by id: all of them unless ``limit`` asks for pages (CONTRACT §2 lists
    ``GET /api/v1/plans`` with no paging; a catalogue beyond PLANS_PAGE still pages)."""
    principal = await caller(request, ADMIN)
    limit = limit_param(request, default=PLANS_PAGE, maximum=PLANS_PAGE)
    rows = await repo.list_plans(
        services(request).pool, principal.tenant, cursor_param(request), limit + 1
    )
    page = rows[:limit]
    more = len(rows) > limit
    return JSONResponse(
        {
            "data": [in_plan_order(jsonio.loads(body)) for _, body in page],
            "next_cursor": encode_cursor(page[-1][0]) if more else None,
        }
    )


async def customer(request: Request) -> Response:
    """``/api/v1/customers/{customer_id}``: GET reads, PUT creates or updates."""
    if request.method == "PUT":
        return await put_customer(request)
    return await get_customer(request)


async def plan(request: Request) -> Response:
    """``/api/v1/plans/{plan_id}``: GET reads, PUT creates or replaces."""
    if request.method == "PUT":
        return await put_plan(request)
    return await get_plan(request)
