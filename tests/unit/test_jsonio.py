from __future__ import annotations

from decimal import Decimal

import pytest

from app import jsonio


def test_numbers_are_exact() -> None:
    assert jsonio.loads(b'{"q": 0.1, "n": 3, "e": 1e2}') == {
        "q": Decimal("0.1"),
        "n": 3,
        "e": Decimal("1E+2"),
    }


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":1,"a":2}',
        b"{",
        b"\xff\xfe",
        b'{"a":1}x',
        '{"a":1}'.encode("utf-16"),  # bodies are UTF-8 (json.loads alone would take it)
        '{"a":1}'.encode("utf-32"),
        '{"a":1}'.encode("utf-16-le"),
    ],
)
def test_refused(body: bytes) -> None:
    with pytest.raises(jsonio.JSONDecodeError):
        jsonio.loads(body)


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    assert jsonio.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}


def test_nan_and_infinity_parse_as_infinite_numbers_for_validation_to_refuse() -> None:
    # Written by Python's json.dumps(float("nan")); CONTRACT §2 wants 422 for them, per field.
    parsed = jsonio.loads(b'{"a":NaN,"b":[Infinity,-Infinity]}')
    assert parsed == {"a": Decimal("Infinity"), "b": [Decimal("Infinity"), Decimal("-Infinity")]}


def test_decimal_written_as_exact_number() -> None:
    out = jsonio.dumps(
        {"estimated_bill": Decimal("177.50"), "list": [Decimal("1E+3")], "text": "@dec-forged:1"}
    )
    assert out == b'{"estimated_bill":177.50,"list":[1000],"text":"@dec-forged:1"}'


def test_decimals_anywhere_in_the_document_are_written_exactly() -> None:
    out = jsonio.dumps(
        {"a": ({"b": [Decimal("-0.10"), (Decimal("2"),)]},), "c": None, "d": 3, "e": True}
    )
    assert out == b'{"a":[{"b":[-0.10,[2]]}],"c":null,"d":3,"e":true}'


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_a_non_finite_decimal_is_refused(value: Decimal) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        jsonio.dumps({"nested": [value]})


def test_what_json_has_no_type_for_is_refused() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        jsonio.dumps({"a": {1, 2}})
    with pytest.raises(ValueError, match="not JSON compliant"):
        jsonio.dumps({"a": float("nan")})
