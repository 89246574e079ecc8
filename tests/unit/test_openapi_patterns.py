"""The served schema's decimal and email rules agree with the handlers', value for value.

Schemathesis judges requests with jsonschema-rs, so that is the validator used here, with
both of its regex engines (fancy-regex, its default, and the regex crate). On the handler
side the real parsers run: ``parse_event`` for usage events, ``parse_plan`` for plans,
``is_email`` and ``text_problem`` for customer emails. A decimal string is valid to the
schema exactly when the handler takes it; the only rule left to the handler alone is the
number of digits after the point where the schema cannot state it (JSON numbers, and money,
whose places depend on the plan's currency).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app import jsonio
from app.decimal_patterns import decimal_pattern
from app.hotpath.events import EventError, parse_event
from app.openapi import openapi_document
from app.plans import PlanValidationError, parse_plan
from app.text import is_email, text_problem

pytestmark = pytest.mark.unit

ENGINES: dict[str, jsonschema_rs.FancyRegexOptions | jsonschema_rs.RegexOptions] = {
    "fancy-regex": jsonschema_rs.FancyRegexOptions(),
    "regex": jsonschema_rs.RegexOptions(),
}
PLACES = "digits after the decimal point"  # the handlers' message for too many places


@functools.cache
def validators(component: str) -> list[Callable[[Any], bool]]:
    """``is_valid`` of ``components/schemas/<component>`` of the served document, per engine."""
    document = openapi_document()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document["components"],
        "$ref": f"#/components/schemas/{component}",
    }
    return [
        jsonschema_rs.validator_for(schema, pattern_options=options).is_valid
        for options in ENGINES.values()
    ]


def schema_says(component: str, body_text: str) -> bool:
    """The verdict of every engine on a body as JSON text (numbers decoded as floats)."""
    body = json.loads(body_text)
    verdicts = {is_valid(body) for is_valid in validators(component)}
    assert len(verdicts) == 1, ("the regex engines disagree", body_text)
    return verdicts.pop()


# --- decimal strings, and numbers ---------------------------------------------------------

# Integer parts on and around every bound the handlers have (10^2, 10^9, 10^12, 10^15).
EDGES = [str(10**k + d) for k in (2, 9, 12, 15) for d in (-1, 0, 1)] + ["0", "1", "5", ""]


@st.composite
def decimal_texts(draw: st.DrawFn) -> str:
    """Strings near the decimal grammar: signs, leading zeros, long fractions, stray chars."""
    sign = draw(st.sampled_from(["", "", "", "-", "+"]))
    zeros = draw(st.text("0", max_size=3))
    integer = draw(st.sampled_from(EDGES) | st.integers(0, 10**17).map(str))
    fraction = draw(
        st.none()
        | st.text("0123456789", max_size=14)
        | st.tuples(st.text("0123456789", max_size=7), st.text("0", max_size=8)).map("".join)
        | st.text("0", min_size=1, max_size=14)
    )
    text = sign + zeros + integer + ("" if fraction is None else "." + fraction)
    stray = draw(st.none() | st.sampled_from([" ", "\n", "e", "E5", "_", "\u0663", "."]))
    if stray is not None:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + stray + text[at:]
    return text


texts = decimal_texts() | st.text("0123456789.-+eE _\n", max_size=20)
numbers = (
    st.integers(-(10**20), 10**20)
    | st.sampled_from([10**k + d for k in (2, 9, 12, 15) for d in (-1, 0, 1)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=0, max_value=10**16)
)
values: st.SearchStrategy[object] = texts | numbers


def excused(value: object, messages: list[str], *, money: bool = False) -> bool:
    """A refusal the schema does not state: places of a JSON number, or of money."""
    return (money or not isinstance(value, str)) and all(PLACES in m for m in messages)


def event_messages(value: object) -> tuple[str, list[str]]:
    text = json.dumps({"customer_id": "c", "resource_type": "r", "quantity": value})
    try:
        parse_event(jsonio.loads(text))
    except EventError as exc:
        return text, [exc.message]
    return text, []


@settings(max_examples=1000, deadline=None)
@given(values)
@example("0")
@example("1000000000.5")
@example("1000000000.000000")
@example("1000000000.0000000")
@example("0.0000001")
@example("0.000001")
@example("000.100000")
@example("1.0000000")
@example("1\n")
def test_quantity_schema_takes_exactly_what_ingest_takes(value: object) -> None:
    body, messages = event_messages(value)
    schema_valid = schema_says("UsageEvent", body)
    assert schema_valid == (not messages) or (schema_valid and excused(value, messages)), (
        value,
        messages,
    )


def plan_with(field: str, value: object) -> dict[str, Any]:
    """A plan whose only number under test is ``value`` in ``field``."""
    plan: dict[str, Any] = {"currency": "USD", "prices": []}
    if field in ("free_units", "unit_price"):
        price = {"resource_type": "r", "model": "per_unit", "unit_price": 1, field: value}
        plan["prices"] = [price]
    elif field in ("up_to", "flat_fee"):
        tiers = [{"up_to": value, "flat_fee": 1}, {"up_to": None}]
        if field == "flat_fee":
            tiers = [{"up_to": 1, "flat_fee": value}, {"up_to": None}]
        plan["prices"] = [{"resource_type": "r", "model": "graduated", "tiers": tiers}]
    elif field in ("package_size", "package_price"):
        price = {"resource_type": "r", "model": "package", "package_size": 1, "package_price": 1}
        plan["prices"] = [{**price, field: value}]
    elif field == "percent":
        plan["discounts"] = [{"percent": value}]
    elif field == "discount":
        plan["discounts"] = [{"amount": value}]
    elif field == "fixed_fee":
        plan["fixed_fees"] = [{"description": "fee", "amount": value}]
    else:
        plan[field] = value
    return plan


PLAN_FIELDS = [
    "free_units",
    "up_to",
    "unit_price",
    "flat_fee",
    "package_size",
    "package_price",
    "percent",
    "discount",
    "fixed_fee",
    "minimum_commitment",
]
MONEY = {"discount", "fixed_fee", "minimum_commitment"}


@pytest.mark.parametrize("field", PLAN_FIELDS)
@settings(max_examples=300, deadline=None)
@given(value=values)
@example(value="0")
@example(value="-0")
@example(value="-0.0")
@example(value="0.0000000000000000")
@example(value="1000000000000")
@example(value=10**13)
@example(value="999999999999.99")
@example(value="100.0000001")
@example(value="100.00000000")
@example(value="0.0000001")
@example(value="1.10000000")
@example(value="1" * 65)
@example(value="0" * 64)
@example(value="0" * 63 + "1")
def test_plan_number_schemas_take_exactly_what_parse_plan_takes(field: str, value: object) -> None:
    body = json.dumps(plan_with(field, value))
    try:
        parse_plan("p", jsonio.loads(body))
        messages: list[str] = []
    except PlanValidationError as exc:
        messages = [d["message"] for d in exc.details]
    schema_valid = schema_says("PlanInput", body)
    agree = schema_valid == (not messages)
    assert agree or (schema_valid and excused(value, messages, money=field in MONEY)), (
        value,
        messages,
    )


def test_the_gaps_schemathesis_found_are_refused_by_both_sides() -> None:
    for quantity in ("0", "1000000000.5"):
        body, messages = event_messages(quantity)
        assert messages
        assert not schema_says("UsageEvent", body)
    gaps: list[tuple[str, object]] = [
        ("package_size", "0"),
        ("minimum_commitment", "1000000000000"),
        ("minimum_commitment", 10**13),
    ]
    for field, value in gaps:
        body = json.dumps(plan_with(field, value))
        with pytest.raises(PlanValidationError):
            parse_plan("p", jsonio.loads(body))
        assert not schema_says("PlanInput", body)


# The pattern builder on its own, exhaustively over short strings and every option.


def reference(
    text: str, *, below: int, places: int, inclusive: bool, positive: bool, trailing: bool
) -> bool:
    """What ``decimal_pattern`` should match, computed with Decimal arithmetic."""
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) is None:
        return False
    value = Decimal(text)
    fraction = text.partition(".")[2]
    if trailing:
        fraction = fraction.rstrip("0")
    return (
        (value > 0 or not positive)
        and (value < 10**below or (inclusive and value == 10**below))
        and len(fraction) <= places
    )


def short_strings() -> Iterator[str]:
    for size in range(7):
        for chars in itertools.product("0159.", repeat=size):
            yield "".join(chars)


@pytest.mark.parametrize(("below", "places"), [(1, 1), (2, 3), (3, 1)], ids=["1-1", "2-3", "3-1"])
def test_decimal_pattern_is_its_definition_on_every_short_string(below: int, places: int) -> None:
    strings = list(short_strings())
    for inclusive, positive, trailing in itertools.product((False, True), repeat=3):
        options = dict(inclusive=inclusive, positive=positive, trailing=trailing)
        pattern = decimal_pattern(
            below=below,
            places=places,
            inclusive=inclusive,
            positive=positive,
            trailing_zeros_free=trailing,
        )
        is_valid = jsonschema_rs.validator_for({"type": "string", "pattern": pattern}).is_valid
        compiled = re.compile(pattern)  # how Schemathesis reads it to generate strings
        for text in strings:
            want = reference(text, below=below, places=places, **options)
            assert is_valid(text) == want, (pattern, text)
            assert (compiled.search(text) is not None) == want, (pattern, text)


# --- email --------------------------------------------------------------------------------


def handler_takes_email(email: str) -> bool:
    """The customer handler's rules for ``email`` (app.api.catalog.put_customer)."""
    return 1 <= len(email) <= 254 and text_problem(email) is None and is_email(email)


def email_schema() -> Callable[[Any], bool]:
    fancy, plain = validators("CustomerInput")
    return lambda email: fancy({"email": email}) and plain({"email": email})


def test_email_schema_and_handler_agree_on_every_character() -> None:
    is_valid = email_schema()
    ecma_space = jsonschema_rs.validator_for({"pattern": r"^\s$"}).is_valid
    for point in range(sys.maxunicode + 1):
        if 0xD800 <= point <= 0xDFFF:
            continue  # lone surrogates cannot reach the schema (not UTF-8); text_problem refuses
        char = chr(point)
        email = f"{char}@{char}"  # either side of the @
        assert is_valid(email) == handler_takes_email(email), hex(point)
        if char.isspace() or ecma_space(char) or char == "\x00":
            assert not handler_takes_email(email), hex(point)


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        st.characters(codec="utf-8", categories=["Zs", "Zl", "Zp", "Cc", "Cf", "Ll", "Nd"])
        | st.sampled_from("@.\x00\ufeff\x85\x1c"),
        max_size=300,
    )
)
@example("a@b")
@example("@")
@example("a b@c")
@example("a@\ufeff")
@example("a@b\n")
def test_email_schema_takes_exactly_what_the_handler_takes(email: str) -> None:
    assert email_schema()(email) == handler_takes_email(email), repr(email)
