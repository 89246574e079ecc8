"""ISO 4217 minor units and money rounding."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.currencies import UnknownCurrencyError, format_money, minor_units, round_money

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("code", "digits"),
    [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_minor_units(code: str, digits: int) -> None:
    assert minor_units(code) == digits


@pytest.mark.parametrize(
    "code",
    [
        "usd",  # codes are upper case; lower case is refused, not fixed up
        "Usd",
        "US",
        "USDD",
        "",
        " USD",
        "USD\n",
        "ZZZ",  # well formed, not a currency
        "XAU",  # gold: no minor unit, so no amount in it can be rounded
        "XDR",
        "XXX",
    ],
)
def test_unknown_currencies_are_refused(code: str) -> None:
    with pytest.raises(UnknownCurrencyError):
        minor_units(code)


def test_unknown_currency_is_a_value_error() -> None:
    assert issubclass(UnknownCurrencyError, ValueError)


@pytest.mark.parametrize(
    ("amount", "code", "expected"),
    [
        ("0.005", "USD", "0.01"),
        ("2.675", "USD", "2.68"),  # 2.675 as a binary float is 2.67499..., which rounds down
        ("1.005", "USD", "1.01"),
        ("0.004999", "USD", "0.00"),
        ("157.5", "USD", "157.50"),
        ("1199.5", "JPY", "1200"),
        ("1.2495", "KWD", "1.250"),
        ("0.00005", "CLF", "0.0001"),
        ("0", "EUR", "0.00"),
        ("-0.001", "USD", "0.00"),  # never "-0.00"
    ],
)
def test_format_money_rounds_half_up(amount: str, code: str, expected: str) -> None:
    assert format_money(Decimal(amount), code) == expected


def test_round_money_keeps_large_amounts_exact() -> None:
    amount = Decimal("123456789012345678901234567.125")
    assert round_money(amount, "USD") == Decimal("123456789012345678901234567.13")
