"""Reads: the live bill and usage series, exact at every instant."""

from __future__ import annotations

import functools
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from app import jsonio
from app.api.context import caller, services
from app.api.params import not_found, path_id
from app.apikeys import Scope
from app.auth import Principal
from app.errors import validation_error
from app.metrics import metrics
from app.quantities import format_quantity
from app.repo.deadline import remaining
from app.repo.errors import DatabaseUnavailableError
from app.responses import JSONResponse
from app.timestamps import HOUR_NS, NS, Period, TimestampError, format_utc, parse_rfc3339
from app.usage_reads import CustomerUsage, read_customer_usage

READ = (Scope.READ, Scope.ADMIN)
MAX_RANGE_NS = 100 * 24 * HOUR_NS
# The last hour datetime can hold a following hour for: hours are clamped to it, so a
# range ending in the last hour of 9999 never builds a datetime in year 10000.
_LAST_HOUR = int(datetime(9999, 12, 31, 22, tzinfo=UTC).timestamp()) // 3600
_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")


@dataclass(frozen=True, slots=True)
class _Month:
    """A bill's month: its hours for the reads and its ``"period"`` member, written once."""

    first_hour: int
    end_hour: int
    period_json: bytes


@functools.lru_cache(maxsize=64)
def _month(year: int, month: int) -> _Month:
    period = Period.of_month(year, month)
    bounds = {"start": format_utc(period.start), "end": format_utc(period.end)}
    return _Month(period.first_hour, period.end_hour, b'"period":' + jsonio.dumps(bounds))


def _customer(request: Request, principal: Principal) -> str:
    customer_id = path_id(request, "customer_id")
    # A key bound to one customer sees no other: the others answer 404, like the missing.
    if principal.customer_id is not None and principal.customer_id != customer_id:
        raise not_found("customer")
    return customer_id


def _period(request: Request) -> _Month:
    raw = request.query_params.get("period")
    if raw is None:
        now = datetime.now(UTC)
        return _month(now.year, now.month)
    match = _PERIOD.fullmatch(raw)
    if match is None or not 1 <= int(match[2]) <= 12 or not 1970 <= int(match[1]) <= 9998:
        raise validation_error("period", "period must be YYYY-MM", "invalid_period")
    return _month(int(match[1]), int(match[2]))


async def get_bill(request: Request) -> Response:
    """The customer's bill for a month: exact usage so far, priced against its plan."""
    principal = await caller(request, READ)
    customer_id = _customer(request, principal)
    month = _period(request)
    svc = services(request)
    started = time.perf_counter()
    if svc.settings.bill_coalesce:
        # The shared read has a budget of its own; the wait for it, queue included, is
        # bounded by this request's (503 once it is spent, as for a read of its own).
        try:
            usage = await svc.bill_reads.submit(
                (principal.tenant, month.first_hour, month.end_hour),
                customer_id,
                give_up_after=remaining(),
            )
        except TimeoutError:
            raise DatabaseUnavailableError("database unavailable (time budget spent)") from None
    else:
        usage = await read_customer_usage(
            svc.scripts,
            svc.pool,
            principal.tenant,
            customer_id,
            month.first_hour,
            month.end_hour,
            monthly=True,
        )
    if not usage.exists:
        raise not_found("customer")
    quantities = tuple(sorted(usage.per_resource().items()))
    bill = svc.rendered_bills.get(usage.plan_id, usage.plan_body, quantities)
    metrics().bill_read_duration.observe(time.perf_counter() - started)
    # One JSON object in the contract's order, from parts written once (the priced bill per
    # plan and usage, the period per month) and the two that are this request's own;
    # as_of, as before, is taken once the usage is read.
    body = b"".join(
        (
            b'{"customer_id":',
            jsonio.dumps(customer_id),
            b",",
            bill.head,
            b",",
            month.period_json,
            b',"as_of":',
            jsonio.dumps(format_utc(datetime.now(UTC))),
            b",",
            bill.rest,
        )
    )
    return Response(body, media_type="application/json")


def _range(request: Request) -> tuple[int, int]:
    """``from`` and ``to`` in nanoseconds since the epoch, exactly as sent (RFC 3339 takes
    nanoseconds: cutting them to microseconds moved an hour in or out of range)."""
    now = datetime.now(UTC)
    bounds: dict[str, int] = {}
    for name, default in (
        ("from", Period.containing(now).start),
        ("to", now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)),
    ):
        raw = request.query_params.get(name)
        if raw is None:
            bounds[name] = int(default.timestamp()) * NS
            continue
        try:
            bounds[name] = parse_rfc3339(raw)
        except TimestampError as exc:
            raise validation_error(name, f"{name} {exc}", "invalid_timestamp") from None
    start, end = bounds["from"], bounds["to"]
    if end <= start:
        raise validation_error("to", "to must be after from", "invalid_range")
    if end - start > MAX_RANGE_NS:
        raise validation_error("to", "the range may span at most 100 days", "invalid_range")
    return start, end


def _ceil_hour(ns: int) -> int:
    """The first hour that starts at or after the instant ``ns``."""
    return min(_LAST_HOUR, -(-ns // HOUR_NS))


async def get_usage(request: Request) -> Response:
    """Usage per resource type and hour or day; an hour counts when it starts in range."""
    principal = await caller(request, READ)
    customer_id = _customer(request, principal)
    granularity = request.query_params.get("granularity", "day")
    if granularity not in ("hour", "day"):
        raise validation_error(
            "granularity", "granularity must be hour or day", "invalid_granularity"
        )
    start, end = _range(request)
    svc = services(request)
    usage = await read_customer_usage(
        svc.scripts, svc.pool, principal.tenant, customer_id, _ceil_hour(start), _ceil_hour(end)
    )
    if not usage.exists:
        raise not_found("customer")
    return JSONResponse(
        {
            "customer_id": customer_id,
            "granularity": granularity,
            "series": _series(usage, granularity),
        }
    )


def _series(usage: CustomerUsage, granularity: str) -> list[dict[str, Any]]:
    points: dict[str, dict[int, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for (resource_type, hour), quantity in usage.buckets.items():
        start = hour if granularity == "hour" else hour - hour % 24
        points[resource_type][start] += quantity
    return [
        {
            "resource_type": resource_type,
            "points": [
                {
                    "start": format_utc(datetime.fromtimestamp(h * 3600, tz=UTC)),
                    "quantity": format_quantity(q),
                }
                for h, q in sorted(points[resource_type].items())
            ],
        }
        for resource_type in sorted(points)
    ]
