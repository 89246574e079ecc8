"""Ingest routes: ``POST /api/v1/usage`` and ``POST /api/v1/usage/batch``."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from app.api.body import json_object, read_json
from app.api.context import caller, services
from app.apikeys import Scope
from app.errors import ApiError
from app.hotpath.events import Event, EventError, parse_event
from app.hotpath.ingest import NeedsSeedError, Outcome, apply_events
from app.metrics import metrics
from app.responses import JSONResponse

log = structlog.get_logger("tally.ingest")
INGEST_SCOPES = (Scope.INGEST, Scope.ADMIN)
_OUTCOME_LABELS = {
    Outcome.ACCEPTED: "accepted",
    Outcome.DUPLICATE: "duplicate",
    Outcome.CONFLICT: "conflict",
    Outcome.OVERFLOW: "rejected",
}
MAX_BATCH = 1000


def _event_error(exc: EventError) -> ApiError:
    return ApiError(422, exc.code, exc.message, [{"field": exc.field, "message": exc.message}])


def _conflict() -> ApiError:
    return ApiError(
        422,
        "idempotency_conflict",
        "this idempotency key was used for a different event; nothing was counted",
        [{"field": "idempotency_key", "message": "used for a different event"}],
    )


def _overflow(field: str = "quantity") -> ApiError:
    return ApiError(
        422,
        "quantity_overflow",
        "this event would take its customer, resource type and hour past "
        "10^12 units; nothing was counted",
        [{"field": field, "message": "hourly total would exceed 10^12 units"}],
    )


async def ingest_one(request: Request) -> Response:
    """Count one event exactly once (202), or say it was already counted (200)."""
    principal = await caller(request, INGEST_SCOPES)
    body = await read_json(request)
    try:
        event = parse_event(body, request.headers.get("idempotency-key"))
    except EventError as exc:
        metrics().ingest_events.labels("rejected").inc()
        log.info("ingest.rejected", code=exc.code, field=exc.field)
        raise _event_error(exc) from None
    svc = services(request)
    outcome: Outcome | None = None
    if svc.settings.coalesce:
        with contextlib.suppress(NeedsSeedError):
            outcome = await svc.coalescer.submit(principal.tenant, event)
    if outcome is None:
        # Alone, with a seeder: its hour may need a PostgreSQL read (app/hotpath/bound.py),
        # which a coalesced call never waits for.
        (outcome,) = await apply_events(
            svc.scripts, principal.tenant, [event], svc.idempotency, seeder=svc.seeder
        )
    metrics().ingest_events.labels(_OUTCOME_LABELS[outcome]).inc()
    if outcome is Outcome.ACCEPTED:
        return JSONResponse({"status": "accepted"}, status_code=202)
    if outcome is Outcome.DUPLICATE:
        return JSONResponse(
            {"status": "duplicate"}, status_code=200, headers={"Idempotent-Replayed": "true"}
        )
    if outcome is Outcome.CONFLICT:
        raise _conflict()
    raise _overflow()


def _result(index: int, outcome: Outcome) -> dict[str, Any]:
    if outcome is Outcome.ACCEPTED:
        return {"index": index, "status": "accepted"}
    if outcome is Outcome.DUPLICATE:
        return {"index": index, "status": "duplicate"}
    if outcome is Outcome.CONFLICT:
        error = _conflict()
        return {
            "index": index,
            "status": "conflict",
            "error": {"code": error.code, "message": error.message},
        }
    error = _overflow()
    return {
        "index": index,
        "status": "rejected",
        "error": {"code": error.code, "message": error.message},
    }


async def ingest_batch(request: Request) -> Response:
    """Count up to 1000 events in one atomic step; invalid ones are rejected one by one."""
    principal = await caller(request, INGEST_SCOPES)
    body = json_object(await read_json(request))
    unknown = sorted(set(body) - {"events"})
    if unknown:
        raise ApiError(
            422,
            "unknown_field",
            f"{unknown[0]} is not a known field",
            [{"field": unknown[0], "message": "is not a known field"}],
        )
    if request.headers.get("idempotency-key") is not None:
        raise ApiError(
            422,
            "validation_error",
            "the Idempotency-Key header applies to single events; give each "
            "batch event its own idempotency_key",
            [{"field": "Idempotency-Key", "message": "not allowed on batches"}],
        )
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise ApiError(
            422,
            "validation_error",
            "events must be a non-empty array",
            [{"field": "events", "message": "must be a non-empty array"}],
        )
    if len(events) > MAX_BATCH:
        raise ApiError(
            422,
            "batch_too_large",
            f"a batch holds at most {MAX_BATCH} events, got {len(events)}",
            [{"field": "events", "message": f"at most {MAX_BATCH} events"}],
        )
    now_ns = time.time_ns()
    results: list[dict[str, Any] | None] = [None] * len(events)
    valid: list[tuple[int, Event]] = []
    for index, raw in enumerate(events):
        try:
            valid.append((index, parse_event(raw, None, now_ns, where=f"events[{index}].")))
        except EventError as exc:
            results[index] = {
                "index": index,
                "status": "rejected",
                "error": {"code": exc.code, "message": exc.message, "field": exc.field},
            }
    svc = services(request)
    outcomes = await apply_events(
        svc.scripts,
        principal.tenant,
        [e for _, e in valid],
        svc.idempotency,
        now_ns,
        seeder=svc.seeder,
    )
    for (index, _), outcome in zip(valid, outcomes, strict=True):
        results[index] = _result(index, outcome)
    final = [r for r in results if r is not None]
    counts = {"accepted": 0, "duplicate": 0, "conflict": 0, "rejected": 0}
    for r in final:
        counts[r["status"]] += 1
    counter = metrics().ingest_events
    for status, count in counts.items():
        if count:
            counter.labels(status).inc(count)
    if counts["rejected"]:
        log.info("ingest.rejected", count=counts["rejected"], batch=len(final))
    return JSONResponse(
        {
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "conflicts": counts["conflict"],
            "rejected": counts["rejected"],
            "results": final,
        },
        status_code=202,
    )
