"""Usage events: parsed and validated before anything touches Redis."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from app import jsonio
from app.ids import id_problem
from app.quantities import QuantityError, to_micro
from app.timestamps import NS, TimestampError, parse_rfc3339

FIELDS = frozenset(
    {"customer_id", "resource_type", "quantity", "timestamp", "idempotency_key", "metadata"}
)
PAST_WINDOW_NS = 35 * 86_400 * NS
FUTURE_WINDOW_NS = 5 * 60 * NS
MAX_METADATA_BYTES = 4096
MAX_IDEMPOTENCY_KEY = 255


class EventError(ValueError):
    """One invalid field: ``code`` for the API, ``field`` names it."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.code = code
        self.field = field
        self.message = f"{field} {message}"


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event. ``micro`` is the quantity in micro-units; ``timestamp_ns`` is UTC."""

    customer_id: str
    resource_type: str
    micro: int
    timestamp_ns: int
    timestamp_given: bool
    idempotency_key: str | None

    def fingerprint(self) -> bytes:
        """8 bytes that equal another event's exactly when both are the *same event*.

        Same event (CONTRACT.md §2): customer, resource type, quantity as an exact decimal
        and timestamp as a UTC instant; an omitted timestamp compares as omitted; metadata
        and where the key came from do not count.
        """
        when = str(self.timestamp_ns) if self.timestamp_given else "-"
        text = f"{self.customer_id}\x00{self.resource_type}\x00{self.micro}\x00{when}"
        return hashlib.sha256(text.encode()).digest()[:8]


def _check_id(body: dict[str, Any], name: str) -> str:
    if name not in body:
        raise EventError(f"invalid_{name}", name, "is required")
    value = body[name]
    problem = id_problem(value)
    if problem:
        raise EventError(f"invalid_{name}", name, problem)
    assert isinstance(value, str)
    return value


def _check_key(key: object, field: str) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise EventError(
            "invalid_idempotency_key",
            field,
            f"must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters",
        )
    if not key.isprintable() or not key.isascii():
        raise EventError("invalid_idempotency_key", field, "must be printable ASCII")
    return key


def _idempotency_key(body: dict[str, Any], header_key: str | None) -> str | None:
    # The header gets the same rules as the body field (it is the same key).
    if header_key is not None:
        _check_key(header_key, "Idempotency-Key")
    key = body.get("idempotency_key")
    if key is not None:
        key = _check_key(key, "idempotency_key")
        if header_key is not None and header_key != key:
            raise EventError(
                "invalid_idempotency_key",
                "idempotency_key",
                "differs from the Idempotency-Key header",
            )
        return key
    return header_key


def parse_event(
    body: object, header_key: str | None = None, now_ns: int | None = None, where: str = ""
) -> Event:
    """Validate one decoded JSON event; raise :class:`EventError` naming the field.

    ``where`` prefixes field names (``events[3].``) in batch requests.
    """
    if not isinstance(body, dict):
        raise EventError("validation_error", where.rstrip(".") or "body", "must be a JSON object")
    try:
        return _parse(body, header_key, time.time_ns() if now_ns is None else now_ns)
    except EventError as exc:
        if where:
            raise EventError(exc.code, where + exc.field, exc.message.split(" ", 1)[1]) from None
        raise


def _parse(body: dict[str, Any], header_key: str | None, now_ns: int) -> Event:
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise EventError("unknown_field", unknown[0], "is not a known field")
    customer_id = _check_id(body, "customer_id")
    resource_type = _check_id(body, "resource_type")
    if "quantity" not in body:
        raise EventError("invalid_quantity", "quantity", "is required")
    try:
        micro = to_micro(body["quantity"])
    except QuantityError as exc:
        raise EventError("invalid_quantity", "quantity", str(exc)) from None
    given = body.get("timestamp") is not None
    if given:
        try:
            ts = parse_rfc3339(body["timestamp"])
        except TimestampError as exc:
            raise EventError("invalid_timestamp", "timestamp", str(exc)) from None
        if ts < now_ns - PAST_WINDOW_NS:
            raise EventError("invalid_timestamp", "timestamp", "is more than 35 days in the past")
        if ts > now_ns + FUTURE_WINDOW_NS:
            raise EventError(
                "invalid_timestamp", "timestamp", "is more than 5 minutes in the future"
            )
    else:
        ts = now_ns
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise EventError("invalid_metadata", "metadata", "must be a JSON object")
        try:
            size = len(jsonio.dumps(metadata))
        except ValueError:  # NaN, Infinity or an exponent beyond range inside it
            raise EventError(
                "invalid_metadata", "metadata", "must contain only finite numbers"
            ) from None
        except RecursionError:  # parsed, but too deep to write again from this stack
            raise EventError("invalid_metadata", "metadata", "is nested too deeply") from None
        if size > MAX_METADATA_BYTES:
            raise EventError(
                "invalid_metadata",
                "metadata",
                f"must be at most {MAX_METADATA_BYTES} bytes as JSON",
            )
    return Event(
        customer_id=customer_id,
        resource_type=resource_type,
        micro=micro,
        timestamp_ns=ts,
        timestamp_given=given,
        idempotency_key=_idempotency_key(body, header_key),
    )
