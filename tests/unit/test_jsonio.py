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
    [b'{"a":1,"a":2}', b'{"a":NaN}', b"[Infinity]", b"[-Infinity]", b"{", b"\xff\xfe", b'{"a":1}x'],
)
def test_refused(body: bytes) -> None:
    with pytest.raises(jsonio.JSONDecodeError):
        jsonio.loads(body)


def test_decimal_written_as_exact_number() -> None:
    out = jsonio.dumps(
        {"estimated_bill": Decimal("177.50"), "list": [Decimal("1E+3")], "text": "@dec-forged:1"}
    )
    assert out == b'{"estimated_bill":177.50,"list":[1000],"text":"@dec-forged:1"}'
