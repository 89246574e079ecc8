"""The pricing engine against CONTRACT §3, published vendor examples, and properties."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_DOWN, ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.plans import Plan, parse_plan
from app.pricing import Bill, TierLine, bill_to_json, price_bill

pytestmark = pytest.mark.unit

D = Decimal

# CONTRACT §3's graduated tiers (5 @ 7, 10 @ 6.5, then 6), here with flat fees 1, 2 and 3
# so that every test also shows which tiers were entered.
TIERS_WITH_FEES: list[dict[str, Any]] = [
    {"up_to": "5", "unit_price": "7", "flat_fee": "1"},
    {"up_to": "10", "unit_price": "6.5", "flat_fee": "2"},
    {"up_to": None, "unit_price": "6", "flat_fee": "3"},
]


def make_plan(*prices: dict[str, Any], currency: str = "USD", **extra: Any) -> Plan:
    return parse_plan("test", {"currency": currency, "prices": list(prices), **extra})


def tiered(model: str, tiers: Sequence[object], **extra: Any) -> dict[str, Any]:
    return {"resource_type": "r", "model": model, "tiers": tiers, **extra}


def per_unit(unit_price: str, resource_type: str = "r", **extra: Any) -> dict[str, Any]:
    return {"resource_type": resource_type, "model": "per_unit", "unit_price": unit_price, **extra}


def package(size: str, price: str, **extra: Any) -> dict[str, Any]:
    return {
        "resource_type": "r",
        "model": "package",
        "package_size": size,
        "package_price": price,
        **extra,
    }


def amount(plan: Plan, quantity: str | int, resource_type: str = "r") -> str:
    """The rendered amount of one resource type's usage line."""
    bill = bill_to_json(price_bill(plan, {resource_type: D(quantity)}))
    (line,) = [x for x in bill["lines"] if x.get("resource_type") == resource_type]
    result: str = line["amount"]
    return result


def totals(bill: Bill) -> tuple[str, str, str, str]:
    rendered = bill_to_json(bill)
    return rendered["subtotal"], rendered["discount"], rendered["minimum_topup"], rendered["total"]


# --- each model at, and just past, each tier bound --------------------------------------


@pytest.mark.parametrize(
    ("quantity", "expected", "tiers_entered"),
    [
        ("0", "1.00", 1),  # the first tier's flat fee is charged even at zero
        ("0.000001", "1.00", 1),
        ("5", "36.00", 1),  # 5 x 7 + 1: up_to is inclusive
        ("5.000001", "38.00", 2),  # 36 + 0.0000065 + flat fee 2 of the tier just entered
        ("10", "70.50", 2),  # 36 + 5 x 6.5 + 2
        ("10.000001", "73.50", 3),  # 70.50 + 0.000006 + 3
        ("25", "163.50", 3),  # 70.50 + 15 x 6 + 3
    ],
)
def test_graduated_at_and_past_each_bound(quantity: str, expected: str, tiers_entered: int) -> None:
    plan = make_plan(tiered("graduated", TIERS_WITH_FEES))
    assert amount(plan, quantity) == expected
    (line,) = price_bill(plan, {"r": D(quantity)}).lines
    assert len(line.tiers) == tiers_entered


def test_graduated_tier_breakdown_just_past_a_bound() -> None:
    plan = make_plan(tiered("graduated", TIERS_WITH_FEES))
    (line,) = price_bill(plan, {"r": D("5.000001")}).lines
    assert line.tiers == (
        TierLine(D(0), D(5), D(5), D(7), D(1), D(36)),
        TierLine(D(5), D(10), D("0.000001"), D("6.5"), D(2), D("2.0000065")),
    )


@pytest.mark.parametrize(
    ("quantity", "expected", "applied_tier"),
    [
        ("0", "1.00", 0),  # 0 is in the first tier: 0 x 7 + 1
        ("5", "36.00", 0),
        ("5.000001", "34.50", 1),  # 5.000001 x 6.5 + 2 = 34.5000065
        ("10", "67.00", 1),
        ("10.000001", "63.00", 2),  # 10.000001 x 6 + 3 = 63.000006
        ("25", "153.00", 2),
    ],
)
def test_volume_at_and_past_each_bound(quantity: str, expected: str, applied_tier: int) -> None:
    plan = make_plan(tiered("volume", TIERS_WITH_FEES))
    assert amount(plan, quantity) == expected
    (line,) = bill_to_json(price_bill(plan, {"r": D(quantity)}))["lines"]
    (tier,) = line["tiers"]  # volume shows the one tier applied
    assert tier["up_to"] == TIERS_WITH_FEES[applied_tier]["up_to"]
    assert tier["quantity"] == quantity


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("0", "50.00"),  # 0 is in the first step
        ("1000", "50.00"),
        ("1000.000001", "200.00"),
        ("5000", "200.00"),
        ("5000.000001", "500.00"),
        ("1000000000", "500.00"),
    ],
)
def test_stair_step_at_and_past_each_bound(quantity: str, expected: str) -> None:
    steps = [
        {"up_to": "1000", "flat_fee": "50"},
        {"up_to": "5000", "flat_fee": "200"},
        {"up_to": None, "flat_fee": "500"},
    ]
    assert amount(make_plan(tiered("stair_step", steps)), quantity) == expected


def test_stair_step_with_a_zero_first_step_makes_no_usage_free() -> None:
    plan = make_plan(tiered("stair_step", [{"up_to": "0"}, {"up_to": None, "flat_fee": "50"}]))
    assert amount(plan, "0") == "0.00"
    assert amount(plan, "0.000001") == "50.00"


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("0", "0.00"),
        ("0.000001", "5.00"),  # a started package counts
        ("100", "5.00"),
        ("100.000001", "10.00"),
        ("200", "10.00"),
        ("201", "15.00"),
    ],
)
def test_package_at_and_past_each_bound(quantity: str, expected: str) -> None:
    assert amount(make_plan(package("100", "5")), quantity) == expected


def test_package_with_a_fractional_size() -> None:
    plan = make_plan(package("0.5", "1.25"))
    assert amount(plan, "1.2") == "3.75"  # ceil(2.4) = 3 packages
    assert amount(plan, "1.5") == "3.75"
    assert amount(plan, "1.500001") == "5.00"


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("0", "0.00"), ("0.1", "1.00"), ("3", "30.00"), ("0.000001", "0.00"), ("0.0005", "0.01")],
)
def test_per_unit(quantity: str, expected: str) -> None:
    assert amount(make_plan(per_unit("10")), quantity) == expected


# --- free units -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "quantity", "expected"),
    [
        (per_unit("10", free_units="3"), "2", "0.00"),  # more free units than usage
        (per_unit("10", free_units="3"), "3", "0.00"),
        (per_unit("10", free_units="3"), "4", "10.00"),
        (per_unit("10", free_units="3"), "3.000001", "0.00"),
        (tiered("graduated", TIERS_WITH_FEES, free_units="30"), "2", "1.00"),  # B = 0
        (tiered("graduated", TIERS_WITH_FEES, free_units="3"), "8", "36.00"),  # B = 5
        (tiered("volume", TIERS_WITH_FEES, free_units="30"), "25", "1.00"),
        (
            tiered(
                "stair_step", [{"up_to": "10"}, {"up_to": None, "flat_fee": "9"}], free_units="5"
            ),
            "15",
            "0.00",
        ),
        (
            tiered(
                "stair_step", [{"up_to": "10"}, {"up_to": None, "flat_fee": "9"}], free_units="5"
            ),
            "16",
            "9.00",
        ),
        (package("100", "5", free_units="100"), "50", "0.00"),
        (package("100", "5", free_units="100"), "100.5", "5.00"),
    ],
)
def test_free_units_come_off_before_pricing(
    price: dict[str, Any], quantity: str, expected: str
) -> None:
    assert amount(make_plan(price), quantity) == expected


def test_line_shows_the_used_quantity_and_tiers_the_billable_one() -> None:
    plan = make_plan(tiered("graduated", TIERS_WITH_FEES, free_units="3"))
    (line,) = bill_to_json(price_bill(plan, {"r": D(8)}))["lines"]
    assert line["quantity"] == "8"
    assert [t["quantity"] for t in line["tiers"]] == ["5"]


# --- rounding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "unit_price", "quantity", "expected"),
    [
        ("USD", "0.005", "1", "0.01"),  # half up, not half even
        ("USD", "2.675", "1", "2.68"),  # a binary float makes this 2.67
        ("USD", "1.005", "1", "1.01"),  # and this 1.00
        ("USD", "0.1", "0.05", "0.01"),
        ("USD", "0.001", "4", "0.00"),
        ("USD", "0.000000000001", "1000000000", "0.00"),
        ("JPY", "0.5", "1", "1"),
        ("JPY", "7", "171.357142", "1199"),  # 1199.499994
        ("JPY", "7", "171.357143", "1200"),  # 1199.500001
        ("JPY", "0.25", "2", "1"),  # 0.5 rounds up
        ("KWD", "0.0005", "2499", "1.250"),  # 1.2495
        ("KWD", "1.25", "1", "1.250"),
        ("BHD", "0.0004", "1", "0.000"),
        ("CLF", "0.00005", "1", "0.0001"),
    ],
)
def test_line_is_rounded_half_up_to_the_minor_unit(
    currency: str, unit_price: str, quantity: str, expected: str
) -> None:
    assert amount(make_plan(per_unit(unit_price), currency=currency), quantity) == expected


def test_line_is_rounded_once_not_per_tier() -> None:
    plan = make_plan(
        tiered(
            "graduated",
            [{"up_to": "1", "unit_price": "0.004"}, {"up_to": None, "unit_price": "0.004"}],
        )
    )
    # 0.004 + 0.004 = 0.008 -> 0.01; rounding each tier first would give 0.00.
    assert amount(plan, "2") == "0.01"


def test_subtotal_adds_rounded_lines() -> None:
    plan = make_plan(per_unit("0.005", "a"), per_unit("0.005", "b"))
    bill = price_bill(plan, {"a": D(1), "b": D(1)})
    # Each line rounds 0.005 up to 0.01; rounding the sum (0.010) would give 0.01.
    assert totals(bill) == ("0.02", "0.00", "0.00", "0.02")


# --- discounts and minimum commitment ---------------------------------------------------


def test_chained_percent_discounts_apply_to_what_is_left() -> None:
    plan = make_plan(
        fixed_fees=[{"description": "Base", "amount": "100.00"}],
        discounts=[{"percent": "10"}, {"percent": "10"}],
    )
    assert totals(price_bill(plan, {})) == ("100.00", "19.00", "0.00", "81.00")


@pytest.mark.parametrize(
    ("discounts", "expected_discount", "expected_total"),
    [
        ([{"amount": "5"}, {"percent": "10"}], "14.50", "85.50"),  # 100 - 5 = 95, 10% = 9.50
        ([{"percent": "10"}, {"amount": "5"}], "15.00", "85.00"),  # order matters
        ([{"percent": "33.333333"}], "33.33", "66.67"),
        ([{"percent": "100"}, {"amount": "5"}], "100.00", "0.00"),
        ([{"percent": "0"}], "0.00", "100.00"),
    ],
)
def test_discounts_in_order(
    discounts: list[dict[str, str]], expected_discount: str, expected_total: str
) -> None:
    plan = make_plan(fixed_fees=[{"description": "Base", "amount": "100"}], discounts=discounts)
    _, discount, _, total = totals(price_bill(plan, {}))
    assert (discount, total) == (expected_discount, expected_total)


def test_percent_discount_is_rounded_half_up() -> None:
    plan = make_plan(per_unit("0.01"), discounts=[{"percent": "50"}])
    # 50% of 0.01 is 0.005, which rounds up to the whole cent.
    assert totals(price_bill(plan, {"r": D(1)})) == ("0.01", "0.01", "0.00", "0.00")


def test_amount_discount_larger_than_subtotal_never_goes_below_zero() -> None:
    plan = make_plan(
        per_unit("10"),
        discounts=[{"description": "Credit", "amount": "500.00"}, {"percent": "10"}],
    )
    assert totals(price_bill(plan, {"r": D("17.75")})) == ("177.50", "177.50", "0.00", "0.00")


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("6", ("60.00", "0.00", "40.00", "100.00")),  # tops up to the commitment
        ("0", ("0.00", "0.00", "100.00", "100.00")),
        ("10", ("100.00", "0.00", "0.00", "100.00")),
        ("15", ("150.00", "0.00", "0.00", "150.00")),
    ],
)
def test_minimum_commitment_top_up(quantity: str, expected: tuple[str, ...]) -> None:
    plan = make_plan(per_unit("10"), minimum_commitment="100.00")
    assert totals(price_bill(plan, {"r": D(quantity)})) == expected


def test_minimum_commitment_applies_after_discounts() -> None:
    plan = make_plan(per_unit("10"), discounts=[{"percent": "10"}], minimum_commitment="100")
    assert totals(price_bill(plan, {"r": D(10)})) == ("100.00", "10.00", "10.00", "100.00")


# --- the contract's example and the bill's shape ----------------------------------------


CONTRACT_EXAMPLE: dict[str, Any] = {
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
        }
    ],
}


def test_contract_live_bill_example() -> None:
    plan = parse_plan("pro", CONTRACT_EXAMPLE)
    assert bill_to_json(price_bill(plan, {"api_call": D(25)})) == {
        "currency": "USD",
        "estimated_bill": D("177.5"),
        "lines": [
            {
                "type": "usage",
                "resource_type": "api_call",
                "model": "graduated",
                "quantity": "25",
                "amount": "157.50",
                "tiers": [
                    {
                        "from": "0",
                        "up_to": "5",
                        "quantity": "5",
                        "unit_price": "7",
                        "flat_fee": "0",
                        "amount": "35",
                    },
                    {
                        "from": "5",
                        "up_to": "10",
                        "quantity": "5",
                        "unit_price": "6.5",
                        "flat_fee": "0",
                        "amount": "32.5",
                    },
                    {
                        "from": "10",
                        "up_to": None,
                        "quantity": "15",
                        "unit_price": "6",
                        "flat_fee": "0",
                        "amount": "90",
                    },
                ],
            },
            {"type": "fixed_fee", "description": "Platform fee", "amount": "20.00"},
        ],
        "subtotal": "177.50",
        "discount": "0.00",
        "minimum_topup": "0.00",
        "total": "177.50",
    }


def test_estimated_bill_is_an_exact_decimal_in_positional_notation() -> None:
    plan = parse_plan("pro", dict(CONTRACT_EXAMPLE, currency="JPY", fixed_fees=[]))
    rendered = bill_to_json(price_bill(plan, {"api_call": D("171.5")}))  # 35 + 32.5 + 969 = 1036.5
    assert rendered["total"] == "1037"
    assert isinstance(rendered["estimated_bill"], Decimal)
    assert str(rendered["estimated_bill"]) == "1037"
    plan = parse_plan(
        "pro",
        dict(CONTRACT_EXAMPLE, currency="JPY", fixed_fees=[{"description": "F", "amount": 1200}]),
    )
    assert str(bill_to_json(price_bill(plan, {}))["estimated_bill"]) == "1200"  # never "1.2E+3"


def test_tier_values_are_trimmed_never_exponents() -> None:
    plan = make_plan(
        tiered(
            "graduated",
            [{"up_to": "10.000", "unit_price": "3.50"}, {"up_to": None, "unit_price": "0.10"}],
        )
    )
    (line,) = bill_to_json(price_bill(plan, {"r": D("10.100")}))["lines"]
    assert line["quantity"] == "10.1"
    assert line["tiers"] == [
        {
            "from": "0",
            "up_to": "10",
            "quantity": "10",
            "unit_price": "3.5",
            "flat_fee": "0",
            "amount": "35",
        },
        {
            "from": "10",
            "up_to": None,
            "quantity": "0.1",
            "unit_price": "0.1",
            "flat_fee": "0",
            "amount": "0.01",
        },
    ]


def test_full_contract_plan() -> None:
    plan = parse_plan(
        "pro",
        {
            **CONTRACT_EXAMPLE,
            "prices": [
                *CONTRACT_EXAMPLE["prices"],
                {
                    "resource_type": "seats",
                    "model": "per_unit",
                    "unit_price": "10",
                    "free_units": "3",
                },
                {
                    "resource_type": "sms",
                    "model": "package",
                    "package_size": "100",
                    "package_price": "5",
                },
                tiered(
                    "volume",
                    [{"up_to": "100", "unit_price": "0.5"}, {"up_to": None, "unit_price": "0.4"}],
                )
                | {"resource_type": "gb"},
                tiered(
                    "stair_step",
                    [{"up_to": "1000", "flat_fee": "50"}, {"up_to": None, "flat_fee": "200"}],
                )
                | {"resource_type": "msgs"},
            ],
            "discounts": [
                {"description": "Launch", "percent": "10"},
                {"description": "Credit", "amount": "5.00"},
            ],
            "minimum_commitment": "100.00",
        },
    )
    quantities = {"api_call": D(25), "seats": D(5), "sms": D(250), "gb": D(150), "msgs": D(1200)}
    rendered = bill_to_json(price_bill(plan, quantities))
    usage = {
        line["resource_type"]: line["amount"]
        for line in rendered["lines"]
        if line["type"] == "usage"
    }
    assert usage == {
        "api_call": "157.50",
        "seats": "20.00",
        "sms": "15.00",
        "gb": "60.00",
        "msgs": "200.00",
    }
    # 472.50 subtotal; 10% -> 47.25, leaving 425.25; credit 5.00 -> 420.25.
    assert (
        rendered["subtotal"],
        rendered["discount"],
        rendered["minimum_topup"],
        rendered["total"],
    ) == (
        "472.50",
        "52.25",
        "0.00",
        "420.25",
    )
    assert "tiers" not in next(
        line for line in rendered["lines"] if line.get("resource_type") == "seats"
    )


def test_one_line_per_priced_or_used_resource_type() -> None:
    plan = make_plan(per_unit("10", "seats"), per_unit("1", "api"))
    rendered = bill_to_json(price_bill(plan, {"zeta": D("2.5"), "api": D(3), "alpha": D(1)}))
    assert [
        (x["resource_type"], x["model"], x["quantity"], x["amount"]) for x in rendered["lines"]
    ] == [
        ("seats", "per_unit", "0", "0.00"),  # priced, no usage
        ("api", "per_unit", "3", "3.00"),
        ("alpha", None, "1", "0.00"),  # usage, no price: amount 0, model null, sorted
        ("zeta", None, "2.5", "0.00"),
    ]
    assert "tiers" not in rendered["lines"][2]


def test_customer_without_a_plan() -> None:
    rendered = bill_to_json(price_bill(None, {"b": D("2.50"), "a": D(1)}))
    assert rendered == {
        "currency": None,
        "estimated_bill": D(0),
        "lines": [
            {"type": "usage", "resource_type": "a", "model": None, "quantity": "1", "amount": "0"},
            {
                "type": "usage",
                "resource_type": "b",
                "model": None,
                "quantity": "2.5",
                "amount": "0",
            },
        ],
        "subtotal": "0",
        "discount": "0",
        "minimum_topup": "0",
        "total": "0",
    }


def test_engine_ignores_the_ambient_decimal_context() -> None:
    plan = parse_plan("pro", CONTRACT_EXAMPLE)
    expected = bill_to_json(price_bill(plan, {"api_call": D("123456.789012")}))
    with localcontext(Context(prec=3, rounding=ROUND_DOWN)):
        assert bill_to_json(price_bill(plan, {"api_call": D("123456.789012")})) == expected
    # 35 + 32.5 + 123446.789012 x 6 + 20 = 740768.234072
    assert expected["total"] == "740768.23"


@pytest.mark.parametrize("quantity", [D("NaN"), D("Infinity"), 1.5, 3])
def test_quantities_must_be_finite_decimals(quantity: Any) -> None:
    with pytest.raises(ValueError, match="finite Decimal"):
        price_bill(parse_plan("pro", CONTRACT_EXAMPLE), {"api_call": quantity})


# --- worked examples published by Stripe, Lago and OpenMeter ----------------------------

STRIPE_TIERS: list[dict[str, Any]] = [
    {"up_to": "5", "unit_price": "7"},
    {"up_to": "10", "unit_price": "6.5"},
    {"up_to": None, "unit_price": "6"},
]


@pytest.mark.parametrize(
    ("fonts", "expected"), [(1, "7.00"), (5, "35.00"), (6, "39.00"), (20, "120.00"), (25, "150.00")]
)
def test_stripe_volume_example(fonts: int, expected: str) -> None:
    # https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing#volume-based-pricing
    # Tiers "1-5: 7 USD, 6-10: 6.5 USD, 11+: 6 USD"; Stripe counts whole units, so its
    # "6-10" is our (5, 10] and the published table (1 -> 7 ... 25 -> 150) carries over as is.
    assert amount(make_plan(tiered("volume", STRIPE_TIERS)), fonts) == expected


@pytest.mark.parametrize(
    ("fonts", "expected"), [(1, "7.00"), (5, "35.00"), (6, "41.50"), (20, "127.50"), (25, "157.50")]
)
def test_stripe_graduated_example(fonts: int, expected: str) -> None:
    # https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing#graduated-pricing
    # Same tiers as the volume example; the page states 5 fonts cost 35 USD as with volume
    # pricing, and 25 is CONTRACT §2's own example (157.50). Whole-unit bounds as above.
    assert amount(make_plan(tiered("graduated", STRIPE_TIERS)), fonts) == expected


def test_lago_volume_example() -> None:
    # https://getlago.com/docs/guide/plans/charges/charge-models/volume
    # Tiers 0-10,000 @ 0.0010, 10,001-50,000 @ 0.0008, 50,001-100,000 @ 0.0006, then
    # 0.0004, each with a 10 USD flat fee; "65,000 API calls would cost 65,000 x $0.0006 +
    # $10 = $49". Lago's whole-unit "10,001" starts are our inclusive up_to bounds.
    tiers = [
        {"up_to": "10000", "unit_price": "0.0010", "flat_fee": "10"},
        {"up_to": "50000", "unit_price": "0.0008", "flat_fee": "10"},
        {"up_to": "100000", "unit_price": "0.0006", "flat_fee": "10"},
        {"up_to": None, "unit_price": "0.0004", "flat_fee": "10"},
    ]
    assert amount(make_plan(tiered("volume", tiers)), 65000) == "49.00"


def test_lago_package_example() -> None:
    # https://getlago.com/docs/guide/plans/charges/charge-models/package
    # "$5 per 100 units and offer the first 100 units ... 201 units would cost $0 (first 100
    # units) + $5 (next 100 units) + $5 (last unit) = $10". The free first 100 are free_units.
    plan = make_plan(package("100", "5", free_units="100"))
    assert amount(plan, 201) == "10.00"


def test_lago_graduated_example() -> None:
    # https://getlago.com/docs/guide/plans/charges/charge-models/graduated
    # "$1 per unit for the first 100 units, then $0.50 per unit for the next 100 calls and
    # finally, $0.10 for any additional unit". The page gives no total; 250 units are
    # 100 + 50 + 5 = 155 by its description.
    tiers = [
        {"up_to": "100", "unit_price": "1"},
        {"up_to": "200", "unit_price": "0.50"},
        {"up_to": None, "unit_price": "0.10"},
    ]
    assert amount(make_plan(tiered("graduated", tiers)), 250) == "155.00"


# https://openmeter.io/docs/billing/product-catalog/pricing-models (also published, same
# text, at https://developer.konghq.com/metering-and-billing/pricing-models/). Tiers are
# given as "First unit 0, Last unit 1000; 1001-5000; 5001-inf": whole-unit ranges that are
# our inclusive up_to 1000 and 5000.
OPENMETER_TIERS: list[dict[str, Any]] = [
    {"up_to": "1000", "unit_price": "0.3", "flat_fee": "0"},
    {"up_to": "5000", "unit_price": "0.2", "flat_fee": "0"},
    {"up_to": None, "unit_price": "0.1", "flat_fee": "0"},
]


def test_openmeter_graduated_example() -> None:
    # "(1000 x $0.3) + (4000 x $0.2) + (1000 x $0.1) = $300 + $800 + $100 = $1,200"
    assert amount(make_plan(tiered("graduated", OPENMETER_TIERS)), 6000) == "1200.00"


def test_openmeter_volume_example() -> None:
    # "a customer with 6,000 units would reach the unit price tier of $0.1 ... 6,000 x $0.1 = $600"
    assert amount(make_plan(tiered("volume", OPENMETER_TIERS)), 6000) == "600.00"


def test_openmeter_flat_price_in_first_tier_example() -> None:
    # "(1000 * $0 + $500) + (1000 * $0.1 + $0) = $600", and "if you have a flat fee of $500
    # in the first tier, the total amount will be $500 when the quantity is 0": the same
    # rule as CONTRACT §3's "first tier's flat fee is charged even when B is 0".
    tiers = [
        {"up_to": "1000", "unit_price": "0", "flat_fee": "500"},
        {"up_to": None, "unit_price": "0.1"},
    ]
    plan = make_plan(tiered("graduated", tiers))
    assert amount(plan, 2000) == "600.00"
    assert amount(plan, 0) == "500.00"


def test_openmeter_zero_when_unused_example() -> None:
    # "(1 * $500 + $0) + (999 * $0 + $0) + (1000 * $0.1 + $0) = $600", and $0 for 0 units.
    tiers = [
        {"up_to": "1", "unit_price": "500"},
        {"up_to": "1000", "unit_price": "0"},
        {"up_to": None, "unit_price": "0.1"},
    ]
    plan = make_plan(tiered("graduated", tiers))
    assert amount(plan, 2000) == "600.00"
    assert amount(plan, 0) == "0.00"


@pytest.mark.parametrize(
    ("usage", "expected"), [("0", "0.00"), ("20", "10.00"), ("20.1", "20.00"), ("98", "50.00")]
)
def test_openmeter_package_example(usage: str, expected: str) -> None:
    # "package size of 20 units and a price of $10 per package": 0 -> $0, 20 -> $10,
    # 20.1 -> $20 ("Adding 0.1 units requires a new package"), 98 -> $50.
    assert amount(make_plan(package("20", "10")), usage) == expected


def test_openmeter_usage_discount_example() -> None:
    # "metered usage is 1,000 units, the usage discount is 900 units, and the per-unit price
    # is $0.1 ... (1000 - 900) x $0.1 = $10", and with a 10% discount "= $9". OpenMeter's
    # usage discount is our free_units; its percentage discount is per rate card where ours
    # is per plan, which is the same here with a single price.
    plan = make_plan(per_unit("0.1", free_units="900"))
    assert amount(plan, 1000) == "10.00"
    discounted = make_plan(per_unit("0.1", free_units="900"), discounts=[{"percent": "10"}])
    assert totals(price_bill(discounted, {"r": D(1000)}))[3] == "9.00"


# --- properties -------------------------------------------------------------------------

quantities = st.decimals(min_value=0, max_value=10**6, places=6)
unit_prices = st.decimals(min_value=0, max_value=1000, places=4)
flat_fees = st.decimals(min_value=0, max_value=1000, places=2)
PROPERTY = settings(max_examples=200, deadline=None, database=None)


@st.composite
def tier_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    bounds = sorted(
        set(draw(st.lists(st.decimals(min_value=0, max_value=10**5, places=6), max_size=5)))
    )
    upper: list[Decimal | None] = [*bounds, None]
    return [
        {"up_to": b, "unit_price": draw(unit_prices), "flat_fee": draw(flat_fees)} for b in upper
    ]


@PROPERTY
@given(tier_lists(), quantities, quantities, quantities)
def test_graduated_is_non_decreasing_in_quantity(
    tiers: list[dict[str, Any]], free: Decimal, q1: Decimal, q2: Decimal
) -> None:
    plan = make_plan(tiered("graduated", tiers, free_units=free))
    low, high = sorted((q1, q2))
    assert price_bill(plan, {"r": low}).total <= price_bill(plan, {"r": high}).total


@PROPERTY
@given(tier_lists(), quantities, quantities)
def test_volume_prices_every_unit_at_the_matching_tier(
    tiers: list[dict[str, Any]], free: Decimal, quantity: Decimal
) -> None:
    plan = make_plan(tiered("volume", tiers, free_units=free))
    billable = max(D(0), quantity - free)
    tier = next(t for t in tiers if t["up_to"] is None or billable <= t["up_to"])
    with localcontext(Context(prec=60)):
        exact = billable * tier["unit_price"] + tier["flat_fee"]
        expected = exact.quantize(D("0.01"), rounding=ROUND_HALF_UP)
    (line,) = price_bill(plan, {"r": quantity}).lines
    assert line.amount == expected
    assert line.tiers[0].up_to == tier["up_to"]
    assert line.tiers[0].amount == exact


@PROPERTY
@given(
    st.decimals(min_value=D("0.000001"), max_value=10**4, places=6),
    st.decimals(min_value=0, max_value=10**4, places=2),
    quantities,
)
def test_package_total_is_a_whole_number_of_packages(
    size: Decimal, price: Decimal, quantity: Decimal
) -> None:
    bill = price_bill(make_plan(package(str(size), str(price))), {"r": quantity})
    with localcontext(Context(prec=60)):
        if price == 0:
            assert bill.total == 0
            return
        packages = bill.total / price
        assert packages == packages.to_integral_value()
        # The fewest packages that hold the usage: enough, and one fewer would not be.
        assert packages * size >= quantity
        assert (packages - 1) * size < quantity or packages == 0


@PROPERTY
@given(
    st.decimals(min_value=0, max_value=10**5, places=2),
    st.lists(
        st.one_of(
            st.builds(lambda p: {"percent": p}, st.decimals(min_value=0, max_value=100, places=3)),
            st.builds(lambda a: {"amount": a}, st.decimals(min_value=0, max_value=10**5, places=2)),
        ),
        max_size=4,
    ),
    st.decimals(min_value=0, max_value=10**5, places=2),
)
def test_bill_totals_are_consistent(
    usage: Decimal, discounts: list[dict[str, Decimal]], minimum: Decimal
) -> None:
    plan = make_plan(per_unit("1"), discounts=discounts, minimum_commitment=minimum)
    bill = price_bill(plan, {"r": usage})
    assert 0 <= bill.discount <= bill.subtotal
    assert bill.minimum_topup == max(D(0), minimum - (bill.subtotal - bill.discount))
    assert bill.total == bill.subtotal - bill.discount + bill.minimum_topup
    assert bill.total >= minimum
    assert bill_to_json(bill)["estimated_bill"] == bill.total
