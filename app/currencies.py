"""ISO 4217 currencies: how many minor-unit digits each one has, and money rounding.

The table comes from the ``iso4217`` package (the SIX-maintained list), so a new or
changed currency arrives with a dependency upgrade rather than a hand edit.
"""

from __future__ import annotations

import functools
import re
from decimal import ROUND_HALF_UP, Context, Decimal

from iso4217 import Currency

__all__ = ["UnknownCurrencyError", "format_money", "minor_units", "round_money"]

# Codes are exactly three upper-case ASCII letters; "usd" is refused rather than
# silently upper-cased so that a plan stores the same spelling it is rendered with.
_CODE = re.compile(r"[A-Z]{3}")

# Wide enough for any amount a validated plan can produce (see app.plans limits),
# so quantize never runs out of digits.
_ROUNDING = Context(prec=60, rounding=ROUND_HALF_UP)


class UnknownCurrencyError(ValueError):
    """The code is not an ISO 4217 currency with a defined minor unit."""


@functools.cache
def _table() -> dict[str, int]:
    # Built at first use, not at import. Funds, metals and testing codes (XAU, XDR,
    # XXX...) have no minor unit ("N.A."): an amount in them cannot be rounded, so
    # they are left out and refused like unknown codes.
    return {c.code: c.exponent for c in Currency if c.exponent is not None}


def minor_units(code: str) -> int:
    """Return the number of minor-unit digits of ``code`` (USD 2, JPY 0, KWD 3, CLF 4).

    Raises ``UnknownCurrencyError`` for anything that is not an upper-case ISO 4217
    code with a defined minor unit.
    """
    if not isinstance(code, str) or _CODE.fullmatch(code) is None:
        raise UnknownCurrencyError(f"not an ISO 4217 currency code: {code!r}")
    try:
        return _table()[code]
    except KeyError:
        raise UnknownCurrencyError(f"unknown currency: {code!r}") from None


@functools.cache
def _quantum(code: str) -> Decimal:
    # Built once per currency (an unknown code raises, and is not cached).
    # Decimal((sign, digits, exponent)) builds 10**-n without touching any context.
    return Decimal((0, (1,), -minor_units(code)))


def round_money(amount: Decimal, code: str) -> Decimal:
    """Round ``amount`` to the minor unit of ``code``, half up (2.675 USD -> 2.68)."""
    rounded = amount.quantize(_quantum(code), rounding=ROUND_HALF_UP, context=_ROUNDING)
    # A zero keeps its exponent but loses a stray minus sign ("-0.00" is not money).
    return rounded.copy_abs() if rounded.is_zero() else rounded


def format_money(amount: Decimal, code: str) -> str:
    """Render ``amount`` with exactly the minor-unit digits of ``code`` ("157.50", "1200")."""
    return format(round_money(amount, code), "f")
