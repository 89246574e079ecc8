"""Plan validation (CONTRACT §3): what is accepted, what is refused, and which field is named."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import jsonio
from app.plans import (
    Discount,
    FixedFee,
    Plan,
    PlanValidationError,
    Price,
    Tier,
    format_decimal,
    in_plan_order,
    parse_plan,
    plan_to_json,
)

pytestmark = pytest.mark.unit

D = Decimal


def per_unit(resource_type: object = "seats", **extra: Any) -> dict[str, Any]:
    return {"resource_type": resource_type, "model": "per_unit", "unit_price": "10", **extra}


def graduated(*tiers: dict[str, Any], model: str = "graduated") -> dict[str, Any]:
    return {"resource_type": "api_call", "model": model, "tiers": list(tiers)}


def plan_body(*prices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"currency": "USD", "prices": list(prices) or [per_unit()], **extra}


def problems(body: object, plan_id: str = "pro") -> list[dict[str, str]]:
    with pytest.raises(PlanValidationError) as caught:
        parse_plan(plan_id, body)
    details = caught.value.details
    assert details, "a refusal must say why"
    for detail in details:
        assert set(detail) == {"field", "message"}
        assert detail["message"]
    return details


def refused_fields(body: object, plan_id: str = "pro") -> set[str]:
    return {detail["field"] for detail in problems(body, plan_id)}


# The contract's own example plan, with the tiers it elides ("...") filled in.
CONTRACT_PLAN: dict[str, Any] = {
    "name": "Pro",
    "currency": "USD",
    "fixed_fees": [{"description": "Platform fee", "amount": "20.00"}],
    "prices": [
        {
            "resource_type": "api_call",
            "model": "graduated",
            "tiers": [
                {"up_to": "5", "unit_price": "7"},
                {"up_to": "10", "unit_price": "6.5"},
                {"up_to": None, "unit_price": "6", "flat_fee": "0"},
            ],
        },
        {"resource_type": "seats", "model": "per_unit", "unit_price": "10", "free_units": "3"},
        {"resource_type": "sms", "model": "package", "package_size": "100", "package_price": "5"},
        {
            "resource_type": "gb",
            "model": "volume",
            "tiers": [{"up_to": "100", "unit_price": "0.5"}, {"up_to": None, "unit_price": "0.4"}],
        },
        {
            "resource_type": "msgs",
            "model": "stair_step",
            "tiers": [{"up_to": "1000", "flat_fee": "50"}, {"up_to": None, "flat_fee": "200"}],
        },
    ],
    "discounts": [
        {"description": "Launch", "percent": "10"},
        {"description": "Credit", "amount": "5.00"},
    ],
    "minimum_commitment": "100.00",
}


# --- accepted --------------------------------------------------------------------------


def test_contract_example_plan_parses() -> None:
    plan = parse_plan("pro", CONTRACT_PLAN)
    assert plan == Plan(
        plan_id="pro",
        name="Pro",
        currency="USD",
        prices=(
            Price(
                "api_call",
                "graduated",
                tiers=(Tier(D(5), D(7)), Tier(D(10), D("6.5")), Tier(None, D(6), D(0))),
            ),
            Price("seats", "per_unit", unit_price=D(10), free_units=D(3)),
            Price("sms", "package", package_size=D(100), package_price=D(5)),
            Price("gb", "volume", tiers=(Tier(D(100), D("0.5")), Tier(None, D("0.4")))),
            Price(
                "msgs",
                "stair_step",
                tiers=(Tier(D(1000), flat_fee=D(50)), Tier(None, flat_fee=D(200))),
            ),
        ),
        fixed_fees=(FixedFee("Platform fee", D("20.00")),),
        discounts=(Discount("Launch", percent=D(10)), Discount("Credit", amount=D("5.00"))),
        minimum_commitment=D("100.00"),
    )


def test_only_currency_and_prices_are_required() -> None:
    plan = parse_plan("basic", {"currency": "EUR", "prices": []})
    assert plan == Plan("basic", "basic", "EUR", prices=())
    assert plan.name == "basic"  # name defaults to the plan id
    assert plan.fixed_fees == ()
    assert plan.discounts == ()
    assert plan.minimum_commitment == 0


@pytest.mark.parametrize("number", [7, D(7), "7", D("7.000"), "7.0", D("7E+0"), D("0.7E+1")])
def test_numbers_are_ints_decimals_or_decimal_strings(number: object) -> None:
    plan = parse_plan("p", plan_body(per_unit(unit_price=number)))
    assert plan.prices[0].unit_price == 7


def test_trailing_zeros_do_not_count_as_decimals() -> None:
    # "20.000" USD is exactly 20.00 and "5.0000000" is exactly 5: the value decides, not the
    # spelling, so JSON encoders that pad with zeros are not refused.
    body = plan_body(
        graduated({"up_to": "5.0000000"}, {"up_to": None}),
        fixed_fees=[{"description": "Fee", "amount": "20.000"}],
    )
    plan = parse_plan("p", body)
    assert plan.prices[0].tiers[0].up_to == 5
    assert plan.fixed_fees[0].amount == 20


def test_prices_may_have_many_decimals() -> None:
    plan = parse_plan("p", plan_body(per_unit(unit_price="0.000000000015")))
    assert plan.prices[0].unit_price == D("0.000000000015")


def test_zero_first_bound_and_free_units_on_every_model() -> None:
    # up_to 0 lets a stair-step or volume price make zero usage free.
    body = plan_body(
        {
            "resource_type": "m",
            "model": "stair_step",
            "free_units": "1.5",
            "tiers": [{"up_to": "0"}, {"up_to": None, "flat_fee": "50"}],
        },
        {
            "resource_type": "p",
            "model": "package",
            "free_units": 100,
            "package_size": "0.5",
            "package_price": 1,
        },
    )
    plan = parse_plan("p", body)
    assert plan.prices[0].tiers[0] == Tier(D(0))
    assert plan.prices[0].free_units == D("1.5")
    assert plan.prices[1].free_units == 100


def test_identifiers_follow_the_contract() -> None:
    rt = "a" + "Z9._-:@+" * 15 + "x" * 7  # 128 characters
    plan = parse_plan("Pro:2026@eu+1", plan_body(per_unit(rt)))
    assert plan.plan_id == "Pro:2026@eu+1"
    assert plan.prices[0].resource_type == rt


def test_tier_prices_and_fees_default_to_zero() -> None:
    plan = parse_plan("p", plan_body(graduated({"up_to": "5"}, {"up_to": None, "flat_fee": "3"})))
    assert plan.prices[0].tiers == (Tier(D(5), D(0), D(0)), Tier(None, D(0), D(3)))


def test_plan_to_json_renders_decimal_strings() -> None:
    body = dict(CONTRACT_PLAN, fixed_fees=[{"description": "Platform fee", "amount": 20}])
    rendered = plan_to_json(parse_plan("pro", body))
    assert rendered["plan_id"] == "pro"
    assert rendered["fixed_fees"] == [{"description": "Platform fee", "amount": "20.00"}]
    assert rendered["minimum_commitment"] == "100.00"
    assert rendered["discounts"] == [
        {"description": "Launch", "percent": "10"},
        {"description": "Credit", "amount": "5.00"},
    ]
    assert rendered["prices"][0]["tiers"] == [
        {"up_to": "5", "unit_price": "7", "flat_fee": "0"},
        {"up_to": "10", "unit_price": "6.5", "flat_fee": "0"},
        {"up_to": None, "unit_price": "6", "flat_fee": "0"},
    ]
    assert rendered["prices"][1] == {
        "resource_type": "seats",
        "model": "per_unit",
        "unit_price": "10",
        "free_units": "3",
    }
    assert rendered["prices"][2] == {
        "resource_type": "sms",
        "model": "package",
        "package_size": "100",
        "package_price": "5",
        "free_units": "0",
    }
    assert rendered["prices"][4]["tiers"] == [
        {"up_to": "1000", "flat_fee": "50"},
        {"up_to": None, "flat_fee": "200"},
    ]


@pytest.mark.parametrize(
    ("currency", "amount"), [("JPY", "1200"), ("KWD", "1.250"), ("CLF", "0.0001")]
)
def test_plan_to_json_uses_the_currency_minor_unit(currency: str, amount: str) -> None:
    body = {"currency": currency, "prices": [], "minimum_commitment": D(amount)}
    assert plan_to_json(parse_plan("p", body))["minimum_commitment"] == amount


def test_plan_to_json_never_uses_exponents() -> None:
    body = plan_body(
        per_unit(unit_price=D("3.5E+1")), graduated({"up_to": D("1E+3")}, {"up_to": None})
    )
    rendered = plan_to_json(parse_plan("p", body))
    assert rendered["prices"][0]["unit_price"] == "35"
    assert rendered["prices"][1]["tiers"][0]["up_to"] == "1000"


def test_plan_round_trips_through_json() -> None:
    plan = parse_plan("pro", CONTRACT_PLAN)
    # A GET body (which carries plan_id) can be PUT back unchanged.
    assert parse_plan("pro", plan_to_json(plan)) == plan


# --- refused: every problem names its field --------------------------------------------


@pytest.mark.parametrize("body", [None, [], "plan", 1, {1: "x"}])
def test_body_must_be_an_object(body: object) -> None:
    assert refused_fields(body) == {"body"}


def test_currency_and_prices_are_required() -> None:
    assert refused_fields({}) == {"currency", "prices"}


def test_unknown_fields_are_refused_at_every_level() -> None:
    body = plan_body(
        graduated({"up_to": "5", "colour": "red"}, {"up_to": None}),
        per_unit(extra=1),
        colour="blue",
        fixed_fees=[{"description": "Fee", "amount": "1", "tax": "0"}],
        discounts=[{"percent": "5", "code": "X"}],
    )
    assert refused_fields(body) == {
        "colour",
        "prices[0].tiers[0].colour",
        "prices[1].extra",
        "fixed_fees[0].tax",
        "discounts[0].code",
    }


@pytest.mark.parametrize("model", ["tiered", "PER_UNIT", "", None, 1])
def test_unknown_model(model: object) -> None:
    assert refused_fields(plan_body({"resource_type": "x", "model": model})) == {"prices[0].model"}


def test_price_needs_resource_type_and_model() -> None:
    assert refused_fields(plan_body({"unit_price": "1"})) == {
        "prices[0].resource_type",
        "prices[0].model",
    }


@pytest.mark.parametrize(
    ("price", "field"),
    [
        ({"resource_type": "x", "model": "per_unit"}, "prices[0].unit_price"),
        ({"resource_type": "x", "model": "graduated"}, "prices[0].tiers"),
        ({"resource_type": "x", "model": "volume"}, "prices[0].tiers"),
        ({"resource_type": "x", "model": "stair_step"}, "prices[0].tiers"),
        (
            {"resource_type": "x", "model": "package", "package_price": "5"},
            "prices[0].package_size",
        ),
        (
            {"resource_type": "x", "model": "package", "package_size": "5"},
            "prices[0].package_price",
        ),
    ],
)
def test_model_requires_its_fields(price: dict[str, Any], field: str) -> None:
    assert refused_fields(plan_body(price)) == {field}


@pytest.mark.parametrize(
    ("price", "field"),
    [
        (per_unit(tiers=[{"up_to": None}]), "prices[0].tiers"),
        (per_unit(package_size="5"), "prices[0].package_size"),
        (dict(graduated({"up_to": None}), unit_price="1"), "prices[0].unit_price"),
        (
            dict(graduated({"up_to": None}, model="volume"), package_price="1"),
            "prices[0].package_price",
        ),
        (
            {
                "resource_type": "x",
                "model": "package",
                "package_size": 1,
                "package_price": 1,
                "unit_price": 1,
            },
            "prices[0].unit_price",
        ),
        # A stair step charges only flat fees; a per-unit price in it would never be charged.
        (
            graduated({"up_to": None, "unit_price": "1"}, model="stair_step"),
            "prices[0].tiers[0].unit_price",
        ),
    ],
)
def test_fields_of_another_model_are_refused(price: dict[str, Any], field: str) -> None:
    assert refused_fields(plan_body(price)) == {field}


@pytest.mark.parametrize("model", ["graduated", "volume", "stair_step"])
def test_tiers_must_not_be_empty(model: str) -> None:
    assert refused_fields(plan_body(graduated(model=model))) == {"prices[0].tiers"}


@pytest.mark.parametrize("tiers", [None, {}, "5", [None], ["x"]])
def test_tiers_must_be_a_list_of_objects(tiers: object) -> None:
    fields = refused_fields(plan_body({"resource_type": "x", "model": "graduated", "tiers": tiers}))
    assert fields <= {"prices[0].tiers", "prices[0].tiers[0]"}
    assert fields


@pytest.mark.parametrize("model", ["graduated", "volume", "stair_step"])
def test_tiers_must_ascend_strictly(model: str) -> None:
    body = plan_body(graduated({"up_to": "10"}, {"up_to": "5"}, {"up_to": None}, model=model))
    assert refused_fields(body) == {"prices[0].tiers[1].up_to"}
    body = plan_body(graduated({"up_to": "5"}, {"up_to": "5.000"}, {"up_to": None}, model=model))
    assert refused_fields(body) == {"prices[0].tiers[1].up_to"}


def test_only_the_last_tier_may_be_unbounded() -> None:
    body = plan_body(graduated({"up_to": "5"}, {"up_to": None}, {"up_to": None}))
    assert refused_fields(body) == {"prices[0].tiers[1].up_to"}


def test_the_last_tier_must_be_unbounded() -> None:
    body = plan_body(graduated({"up_to": "5"}, {"up_to": "10"}))
    assert refused_fields(body) == {"prices[0].tiers[1].up_to"}


def test_up_to_must_be_given_even_on_the_last_tier() -> None:
    body = plan_body(graduated({"up_to": "5"}, {"unit_price": "1"}))
    assert refused_fields(body) == {"prices[0].tiers[1].up_to"}


@pytest.mark.parametrize("size", ["0", 0, "-1", "0.0000001"])
def test_package_size_must_be_positive_with_at_most_six_decimals(size: object) -> None:
    price = {"resource_type": "sms", "model": "package", "package_size": size, "package_price": "5"}
    assert refused_fields(plan_body(price)) == {"prices[0].package_size"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (plan_body(per_unit(unit_price="-1")), "prices[0].unit_price"),
        (plan_body(per_unit(unit_price=D("-0.01"))), "prices[0].unit_price"),
        (plan_body(per_unit(free_units="-3")), "prices[0].free_units"),
        (plan_body(graduated({"up_to": "-5"}, {"up_to": None})), "prices[0].tiers[0].up_to"),
        (plan_body(graduated({"up_to": None, "unit_price": -6})), "prices[0].tiers[0].unit_price"),
        (plan_body(graduated({"up_to": None, "flat_fee": "-1"})), "prices[0].tiers[0].flat_fee"),
        (
            plan_body(
                {"resource_type": "x", "model": "package", "package_size": 1, "package_price": "-5"}
            ),
            "prices[0].package_price",
        ),
        (
            plan_body(fixed_fees=[{"description": "Fee", "amount": "-20.00"}]),
            "fixed_fees[0].amount",
        ),
        (plan_body(discounts=[{"amount": "-5"}]), "discounts[0].amount"),
        (plan_body(discounts=[{"percent": "-5"}]), "discounts[0].percent"),
        (plan_body(minimum_commitment="-100"), "minimum_commitment"),
    ],
)
def test_negative_numbers_are_refused(body: dict[str, Any], field: str) -> None:
    assert refused_fields(body) == {field}


@pytest.mark.parametrize(
    "discount",
    [{"description": "Both", "percent": "10", "amount": "5"}, {"description": "Neither"}],
)
def test_discount_has_exactly_one_of_percent_or_amount(discount: dict[str, Any]) -> None:
    assert refused_fields(plan_body(discounts=[discount])) == {"discounts[0]"}


@pytest.mark.parametrize("percent", ["100.000001", "101", 1000, "100000"])
def test_discount_percent_is_at_most_100(percent: object) -> None:
    assert refused_fields(plan_body(discounts=[{"percent": percent}])) == {"discounts[0].percent"}


@pytest.mark.parametrize("percent", ["0", "100", "12.5", "33.333333"])
def test_discount_percent_bounds_are_inclusive(percent: str) -> None:
    plan = parse_plan("p", plan_body(discounts=[{"percent": percent}]))
    assert plan.discounts == (Discount("", percent=D(percent)),)


@pytest.mark.parametrize(
    "resource_type",
    ["", ".api", "-api", "api call", "api/call", "api#1", "é", "a" * 129, 5, None],
)
def test_resource_type_follows_the_identifier_rule(resource_type: object) -> None:
    assert refused_fields(plan_body(per_unit(resource_type))) == {"prices[0].resource_type"}


def test_resource_type_appears_once_per_plan() -> None:
    body = plan_body(per_unit("seats"), per_unit("api"), per_unit("seats"))
    assert refused_fields(body) == {"prices[2].resource_type"}


def test_resource_types_are_case_sensitive() -> None:
    plan = parse_plan("p", plan_body(per_unit("seats"), per_unit("Seats")))
    assert [p.resource_type for p in plan.prices] == ["seats", "Seats"]


@pytest.mark.parametrize("currency", ["usd", "ZZZ", "XAU", "US", "", 840, None])
def test_unknown_currency_is_refused(currency: object) -> None:
    assert refused_fields({"currency": currency, "prices": []}) == {"currency"}


@pytest.mark.parametrize(
    ("currency", "body", "field"),
    [
        (
            "USD",
            {"fixed_fees": [{"description": "Fee", "amount": "20.001"}]},
            "fixed_fees[0].amount",
        ),
        ("JPY", {"fixed_fees": [{"description": "Fee", "amount": "20.5"}]}, "fixed_fees[0].amount"),
        ("KWD", {"minimum_commitment": "1.0001"}, "minimum_commitment"),
        ("USD", {"minimum_commitment": D("0.001")}, "minimum_commitment"),
        ("EUR", {"discounts": [{"amount": "0.125"}]}, "discounts[0].amount"),
    ],
)
def test_money_has_at_most_the_currency_minor_digits(
    currency: str, body: dict[str, Any], field: str
) -> None:
    assert refused_fields({"currency": currency, "prices": [], **body}) == {field}


def test_money_scale_is_not_checked_against_an_unknown_currency() -> None:
    # Only the currency is reported: its minor unit is unknown, so no amount can be judged.
    body = {"currency": "ZZZ", "prices": [], "minimum_commitment": "1.001"}
    assert refused_fields(body) == {"currency"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (plan_body(graduated({"up_to": "5.0000001"}, {"up_to": None})), "prices[0].tiers[0].up_to"),
        (plan_body(per_unit(free_units="0.1234567")), "prices[0].free_units"),
        (
            plan_body(
                {
                    "resource_type": "x",
                    "model": "package",
                    "package_size": D("1.0000001"),
                    "package_price": 1,
                }
            ),
            "prices[0].package_size",
        ),
        (plan_body(per_unit(unit_price="0.0000000000001")), "prices[0].unit_price"),  # 13 places
        (plan_body(discounts=[{"percent": "10.0000001"}]), "discounts[0].percent"),
    ],
)
def test_quantities_have_at_most_six_decimals(body: dict[str, Any], field: str) -> None:
    assert refused_fields(body) == {field}


@pytest.mark.parametrize(
    "number",
    [
        True,
        False,
        1.5,  # a binary float: the decoder should have produced a Decimal
        float("nan"),
        float("inf"),
        D("NaN"),
        D("sNaN"),
        D("Infinity"),
        D("-Infinity"),
        D("1E+100"),  # exponents beyond range
        D("1E+999999999"),
        D("1E-100"),
        D("1E-999999999"),
        "1e3",  # strings are plain decimals
        "NaN",
        "Infinity",
        " 5",
        "5 ",
        "1_000",
        "+5",
        ".5",
        "5.",
        "",
        "٣",  # an Arabic-Indic digit, which Decimal() would take
        "1" * 65,
        [5],
        {"value": 5},
        None,
    ],
)
def test_numbers_must_be_exact_finite_and_in_range(number: object) -> None:
    assert refused_fields(plan_body(per_unit(unit_price=number))) == {"prices[0].unit_price"}


def test_huge_quantities_are_refused() -> None:
    body = plan_body(graduated({"up_to": 10**15}, {"up_to": None}))
    assert refused_fields(body) == {"prices[0].tiers[0].up_to"}
    plan = parse_plan("p", plan_body(graduated({"up_to": 10**15 - 1}, {"up_to": None})))
    assert plan.prices[0].tiers[0].up_to == 10**15 - 1


@pytest.mark.parametrize("plan_id", ["", ".pro", "pro plan", "a" * 129])
def test_plan_id_follows_the_identifier_rule(plan_id: str) -> None:
    assert "plan_id" in refused_fields(plan_body(name="Pro"), plan_id=plan_id)


def test_plan_id_in_the_body_must_match_the_path() -> None:
    assert refused_fields(plan_body(plan_id="other")) == {"plan_id"}
    assert parse_plan("pro", plan_body(plan_id="pro")).plan_id == "pro"


@pytest.mark.parametrize("name", ["", None, 5, "x" * 257])
def test_name_must_be_a_short_string(name: object) -> None:
    assert refused_fields(plan_body(name=name)) == {"name"}


@pytest.mark.parametrize(
    ("fee", "fields"),
    [
        ({"amount": "1.00"}, {"fixed_fees[0].description"}),
        ({"description": "Fee"}, {"fixed_fees[0].amount"}),
        ({"description": "", "amount": "1"}, {"fixed_fees[0].description"}),
        ("20.00", {"fixed_fees[0]"}),
    ],
)
def test_fixed_fee_needs_description_and_amount(fee: object, fields: set[str]) -> None:
    assert refused_fields(plan_body(fixed_fees=[fee])) == fields


@pytest.mark.parametrize("key", ["prices", "fixed_fees", "discounts"])
def test_lists_must_be_lists(key: str) -> None:
    assert refused_fields(plan_body(**{key: {"a": 1}})) == {key}


def test_too_many_tiers_are_refused() -> None:
    tiers = [{"up_to": str(i)} for i in range(1, 251)] + [{"up_to": None}]
    assert refused_fields(plan_body(graduated(*tiers))) == {"prices[0].tiers"}


def test_every_problem_is_reported_not_just_the_first() -> None:
    body = {
        "currency": "usd",
        "prices": [
            graduated({"up_to": "10"}, {"up_to": "5"}, {"up_to": None, "unit_price": "-6"}),
            per_unit("bad id"),
        ],
        "discounts": [{"percent": "10", "amount": "1"}],
        "minimum_commitment": 1.5,
    }
    assert refused_fields(body) == {
        "currency",
        "prices[0].tiers[1].up_to",
        "prices[0].tiers[2].unit_price",
        "prices[1].resource_type",
        "discounts[0]",
        "minimum_commitment",
    }


def test_validation_error_is_a_value_error_with_details() -> None:
    with pytest.raises(ValueError, match="invalid plan") as caught:
        parse_plan("p", {"currency": "USD"})
    assert isinstance(caught.value, PlanValidationError)
    assert caught.value.details == [{"field": "prices", "message": "is required"}]


@pytest.mark.parametrize(
    ("values", "text"),
    [
        (["1E+2", "100", "100.000", "1.00E+2"], "100"),
        (["15E-1", "1.50", "1.5"], "1.5"),
        (["-0.0", "0E-7", "0", "-0"], "0"),
        (["-0.10", "-0.1"], "-0.1"),
        (["123456789012345678901234567890.000000001"], "123456789012345678901234567890.000000001"),
    ],
)
def test_format_decimal_writes_a_value_one_way_whichever_spelling_came_first(
    values: list[str], text: str
) -> None:
    # format_decimal is cached by value: equal values spelled differently share an entry.
    for spelling in values + values[::-1]:
        assert format_decimal(Decimal(spelling)) == text


# --- stored as jsonb and read back (GET answers what PUT did) -----------------------------------


# Numbers as a client may send them: strings with trailing zeros, and JSON numbers, which
# the API parses as Decimals (exponent forms such as 1.5E+3 included).
def _as_sent(value: Decimal) -> st.SearchStrategy[object]:
    plain = f"{value:f}"
    padded = plain + ("0" if "." in plain else ".0")
    return st.sampled_from([plain, padded, value, value.normalize()])


def _number(places: int, high: int) -> st.SearchStrategy[object]:
    return st.decimals(min_value=0, max_value=high, places=places).flatmap(_as_sent)


@st.composite
def _tiers(draw: st.DrawFn, fee_only: bool = False) -> list[dict[str, Any]]:
    bounds = sorted(set(draw(st.lists(st.decimals(0, 10**6, places=6), max_size=4))))
    tiers: list[dict[str, Any]] = []
    for bound in [*bounds, None]:
        tier: dict[str, Any] = {"up_to": None if bound is None else draw(_as_sent(bound))}
        if not fee_only:
            tier["unit_price"] = draw(_number(6, 1000))
        if fee_only or draw(st.booleans()):
            tier["flat_fee"] = draw(_number(2, 1000))
        tiers.append(tier)
    return tiers


@st.composite
def _plans(draw: st.DrawFn) -> dict[str, Any]:
    currency, minor = draw(st.sampled_from([("USD", 2), ("JPY", 0), ("KWD", 3)]))
    prices: list[dict[str, Any]] = []
    for n, model in enumerate(draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=5))):
        price: dict[str, Any] = {"resource_type": f"r{n}", "model": model}
        if model == "per_unit":
            price["unit_price"] = draw(_number(6, 1000))
        elif model == "package":
            price["package_size"] = draw(st.decimals(1, 1000, places=0).flatmap(_as_sent))
            price["package_price"] = draw(_number(minor, 1000))
        else:
            price["tiers"] = draw(_tiers(fee_only=model == "stair_step"))
        if draw(st.booleans()):
            price["free_units"] = draw(_number(6, 10**4))
        prices.append(price)
    discount = st.one_of(
        st.builds(lambda p: {"description": "off", "percent": p}, _number(2, 100)),
        st.builds(lambda a: {"description": "credit", "amount": a}, _number(minor, 10**4)),
    )
    fee = st.builds(lambda a: {"description": "fee", "amount": a}, _number(minor, 10**4))
    body: dict[str, Any] = {"currency": currency, "prices": prices}
    if draw(st.booleans()):
        body["name"] = draw(st.sampled_from(["Pro", "Ünïcode ✓", "  spaced  "]))
    if draw(st.booleans()):
        body["fixed_fees"] = draw(st.lists(fee, max_size=3))
    if draw(st.booleans()):
        body["discounts"] = draw(st.lists(discount, max_size=3))
    if draw(st.booleans()):
        body["minimum_commitment"] = draw(_number(minor, 10**5))
    return body


MODELS = ("per_unit", "graduated", "volume", "package", "stair_step")


def _as_jsonb_keeps_it(document: Any) -> Any:
    """``document`` with its members in PostgreSQL jsonb's order: shorter keys first, then
    by their bytes."""
    if isinstance(document, dict):
        order = sorted(document, key=lambda m: (len(m.encode()), m.encode()))
        return {m: _as_jsonb_keeps_it(document[m]) for m in order}
    if isinstance(document, list):
        return [_as_jsonb_keeps_it(item) for item in document]
    return document


@settings(max_examples=300, deadline=None, database=None)
@given(_plans())
def test_a_stored_plan_reads_back_as_its_put_answered(body: dict[str, Any]) -> None:
    # PUT answers plan_to_json(parse_plan(body)) and stores it as jsonb, which reorders
    # every object's members; a read puts them back in the PUT's order, byte for byte.
    answered = jsonio.dumps(plan_to_json(parse_plan("p", body)))
    stored = jsonio.dumps(_as_jsonb_keeps_it(jsonio.loads(answered)))
    assert jsonio.dumps(in_plan_order(jsonio.loads(stored))) == answered


def test_members_the_plan_order_does_not_know_keep_their_place_after_the_rest() -> None:
    stored = {"zeta": 1, "currency": "USD", "alpha": [{"amount": "1", "x": 2}], "plan_id": "p"}
    assert list(in_plan_order(stored)) == ["plan_id", "currency", "zeta", "alpha"]
    assert list(in_plan_order(stored)["alpha"][0]) == ["amount", "x"]
