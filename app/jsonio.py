"""JSON in and out, exactly.

In: duplicate keys are refused; every number with a fraction or an exponent becomes a
:class:`~decimal.Decimal` (0.1 is one tenth, never a binary float); NaN and Infinity (not
JSON, but written by Python's json module) become infinite Decimals that validation refuses.
Out: :class:`~decimal.Decimal` values are written as JSON numbers digit for digit.
"""

from __future__ import annotations

import json
import re
import secrets
from decimal import Decimal, InvalidOperation
from typing import Any


class JSONDecodeError(ValueError):
    """The body is not the strict JSON Tally accepts; ``message`` says why."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JSONDecodeError(f"duplicate key {key!r} in a JSON object")
        result[key] = value
    return result


def _non_finite(name: str) -> Decimal:
    # JSON has no NaN or Infinity, but Python's json.dumps (and so many clients) writes them.
    # CONTRACT §2 refuses them with 422, field by field: they parse as a non-finite number,
    # which every validator refuses ("must be finite"), like an exponent beyond range. NaN
    # becomes Infinity, so no comparison ever meets a NaN.
    return Decimal("-Infinity") if name.startswith("-") else Decimal("Infinity")


def _exact_decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        # An exponent beyond Decimal's range (1e9999999999999999999): keep it a number that
        # validation refuses with 422 ("must be finite"), as any out-of-range number.
        return Decimal("Infinity") if not text.startswith("-") else Decimal("-Infinity")


def _exact_int(text: str) -> int | Decimal:
    # Very long integers would make int() slow (and CPython limits them): keep them decimal.
    return int(text) if len(text) <= 40 else Decimal(text)


def loads(body: bytes | str) -> Any:
    """Parse strict JSON (see module docstring)."""
    try:
        # UTF-8 only (CONTRACT §2): json.loads would also take UTF-16 and UTF-32 bytes. A
        # UTF-8 byte-order mark is ignored, as RFC 8259 allows (some clients send one).
        text = body.removeprefix(b"\xef\xbb\xbf").decode() if isinstance(body, bytes) else body
        document = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_exact_decimal,
            parse_int=_exact_int,
            parse_constant=_non_finite,
        )
    except JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and json.JSONDecodeError are ValueErrors.
        raise JSONDecodeError(f"malformed JSON: {exc}") from None
    return document


# Decimals are written through a marker string that is then replaced by the number's digits:
# json's encoders (C and Python) write floats with float.__repr__, so a float subclass cannot
# carry exact text. The marker holds a per-process random nonce, so no client string can
# forge it.
_NONCE = secrets.token_hex(8)
_MARK = f"@dec{_NONCE}:"
_MARKED = re.compile('"' + re.escape(_MARK) + r'(-?[0-9]+(?:\.[0-9]+)?)"')


def _decimal_text(obj: Any) -> str:
    # The encoder's ``default``: called for what JSON has no type for, here a Decimal only.
    # The C encoder walks dicts, lists and tuples itself and calls this just for the
    # Decimals (a copy of the whole document first, in Python, was a third of a bill's
    # rendering).
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError("cannot write a non-finite Decimal as JSON")
        return _MARK + format(obj, "f")
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# ASCII output: any string a client sent (a lone surrogate escape included) can be echoed
# back in an error message without an encoding error.
_encoder = json.JSONEncoder(
    ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=_decimal_text
)


def dumps(obj: Any) -> bytes:
    """Serialise ``obj`` compactly as UTF-8 JSON; Decimals become exact JSON numbers."""
    text = _encoder.encode(obj)
    if _MARK in text:
        text = _MARKED.sub(r"\1", text)
    return text.encode("utf-8")
