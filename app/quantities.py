"""Quantities: exact decimals in, integer micro-units (10⁻⁶) everywhere inside.

Redis counters, Lua and PostgreSQL all see integers; a Decimal is made again only to show
a quantity or to price it. Floats never appear: ``INCRBYFLOAT`` would drift.
"""

from __future__ import annotations

import re
from decimal import Decimal

MICRO = 1_000_000
MAX_EVENT_UNITS = 1_000_000_000
MAX_HOUR_UNITS = 10**12
MAX_EVENT_MICRO = MAX_EVENT_UNITS * MICRO
MAX_HOUR_MICRO = MAX_HOUR_UNITS * MICRO

_PLAIN = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class QuantityError(ValueError):
    """The value is not a quantity the contract accepts; the message says why."""


def to_micro(value: object) -> int:
    """Parse a JSON number (int or Decimal) or a decimal string into micro-units.

    Accepted: > 0, at most 6 digits after the point, at most 1,000,000,000.
    """
    if isinstance(value, bool):
        raise QuantityError("must be a number or a decimal string, not a boolean")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        if _PLAIN.fullmatch(value) is None:
            raise QuantityError('must be a plain decimal string such as "12.5"')
        number = Decimal(value)
    else:
        raise QuantityError("must be a number or a decimal string")
    if not number.is_finite():
        raise QuantityError("must be a finite number")
    if number <= 0:
        raise QuantityError("must be greater than 0")
    # adjusted() is the exponent of the leading digit: checked before any arithmetic, so an
    # exponent such as 1e999999999 is refused without building a huge integer.
    if number.adjusted() > 9:
        raise QuantityError(f"must be at most {MAX_EVENT_UNITS}")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -6:
        raise QuantityError("must have at most 6 digits after the decimal point")
    micro = int(number.scaleb(6))
    if micro > MAX_EVENT_MICRO:
        raise QuantityError(f"must be at most {MAX_EVENT_UNITS}")
    return micro


def as_micro(quantity: Decimal) -> int:
    """An exact quantity (at most 6 digits after the point, as stored) in micro-units."""
    scaled = quantity.scaleb(6)
    micro = int(scaled)
    if micro != scaled:
        raise ValueError(f"{quantity} has more than 6 digits after the point")
    return micro


def from_micro(micro: int) -> Decimal:
    """Micro-units back to an exact Decimal in units."""
    return Decimal(micro).scaleb(-6)


def format_quantity(value: Decimal | int) -> str:
    """A quantity as a decimal string with trailing zeros trimmed ("0.1", "25")."""
    number = Decimal(value)
    if number == 0:
        return "0"
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
