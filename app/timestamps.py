"""RFC 3339 timestamps parsed exactly (to the nanosecond), hour buckets and months, UTC."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

NS = 1_000_000_000
HOUR_NS = 3600 * NS

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


class TimestampError(ValueError):
    """Not an RFC 3339 timestamp with an offset."""


def parse_rfc3339(text: object) -> int:
    """Nanoseconds since the Unix epoch (UTC) of an RFC 3339 timestamp with offset."""
    if not isinstance(text, str):
        raise TimestampError("must be an RFC 3339 string such as 2026-11-23T10:00:00Z")
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise TimestampError("must be RFC 3339 with an offset, such as 2026-11-23T10:00:00Z")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    if second == 60:
        raise TimestampError("leap seconds are not accepted")
    try:
        base = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise TimestampError(f"is not a valid date or time: {exc}") from None
    offset = timedelta(0)
    if match[9]:
        oh, om = int(match[10]), int(match[11])
        if oh > 23 or om > 59:
            raise TimestampError("has an invalid UTC offset")
        offset = timedelta(hours=oh, minutes=om) * (1 if match[9] == "+" else -1)
    fraction = int((match[7] or "0").ljust(9, "0"))
    try:
        seconds = int((base - offset).timestamp())
    except OverflowError:
        raise TimestampError("is out of range") from None
    return seconds * NS + fraction


def hour_of(ns: int) -> int:
    """The hour bucket (hours since the epoch) of an instant."""
    return ns // HOUR_NS


def hour_start(hour: int) -> datetime:
    """The UTC start of an hour bucket."""
    return datetime.fromtimestamp(hour * 3600, tz=UTC)


def format_utc(moment: datetime) -> str:
    """``2026-11-23T10:00:00Z`` (milliseconds only when present)."""
    m = moment.astimezone(UTC)
    # An f-string, not strftime: a third of the time, and the year always has 4 digits.
    text = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    if m.microsecond:
        return f"{text}.{m.microsecond // 1000:03d}Z"
    return f"{text}Z"


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar month in UTC: ``[start, end)``."""

    start: datetime
    end: datetime

    @classmethod
    def of_month(cls, year: int, month: int) -> Period:
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        return cls(start, end)

    @classmethod
    def containing(cls, moment: datetime) -> Period:
        moment = moment.astimezone(UTC)
        return cls.of_month(moment.year, moment.month)

    @property
    def first_hour(self) -> int:
        return int(self.start.timestamp()) // 3600

    @property
    def end_hour(self) -> int:
        return int(self.end.timestamp()) // 3600
