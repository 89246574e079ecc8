"""Bills rendered once per (stored plan, quantities), within a byte budget."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from app import jsonio, rendered_bills
from app.plans import parse_plan
from app.pricing import bill_to_json, price_bill
from app.rendered_bills import RenderedBills, render

pytestmark = pytest.mark.unit

D = Decimal


def plan_text(unit_price: str, **extra: Any) -> str:
    return json.dumps(
        {
            "currency": "EUR",
            "prices": [{"resource_type": "sms", "model": "per_unit", "unit_price": unit_price}],
            **extra,
        }
    )


def whole(plan_id: str | None, body: str | None, quantities: dict[str, Decimal]) -> bytes:
    """The bill as one document, rendered without anything kept, head keys first."""
    plan = parse_plan(plan_id, json.loads(body)) if plan_id and body else None
    bill = bill_to_json(price_bill(plan, quantities))
    head = {
        "currency": bill.pop("currency"),
        "estimated_bill": bill.pop("estimated_bill"),
        "plan_id": plan_id if plan else None,
    }
    return jsonio.dumps({**head, **bill})


def spliced(plan_id: str | None, body: str | None, quantities: dict[str, Decimal]) -> bytes:
    bill = RenderedBills().get(plan_id, body, tuple(sorted(quantities.items())))
    fields = jsonio.dumps(
        {"currency": bill.currency, "estimated_bill": bill.estimated_bill, "plan_id": bill.plan_id}
    )
    assert b"{" + bill.head + b"}" == fields
    return b"{" + bill.head + b"," + bill.rest


@pytest.mark.parametrize(
    ("plan_id", "body", "quantities"),
    [
        ("p", plan_text("0.015"), {"sms": D("1234.5")}),
        ("p", plan_text("0.015"), {"sms": D("1234.5"), "other": D(3)}),
        ("p", plan_text("2", fixed_fees=[{"description": "x", "amount": "5"}]), {}),
        (None, None, {"sms": D("0.5")}),
        ("gone", None, {"sms": D(7)}),  # a plan id whose plan is not stored
    ],
)
def test_the_head_and_rest_are_the_whole_bill(
    plan_id: str | None, body: str | None, quantities: dict[str, Decimal]
) -> None:
    assert spliced(plan_id, body, quantities) == whole(plan_id, body, quantities)


def test_a_bill_is_rendered_once_and_again_when_plan_or_quantities_change() -> None:
    bills = RenderedBills()
    cheap, dear = plan_text("1"), plan_text("2")
    first = bills.get("p", cheap, (("sms", D(10)),))
    assert bills.get("p", cheap, (("sms", D(10)),)) is first
    assert b'"total":"10.00"' in first.rest
    # The same plan id with another stored document, and other quantities: priced afresh.
    assert b'"total":"20.00"' in bills.get("p", dear, (("sms", D(10)),)).rest
    assert b'"total":"11.00"' in bills.get("p", cheap, (("sms", D(11)),)).rest
    assert len(bills) == 3
    assert first.currency == "EUR"
    assert first.estimated_bill == 10
    assert first.plan_id == "p"


def test_kept_bills_stay_within_the_byte_budget_least_recently_used_first() -> None:
    body = plan_text("1")
    bill = render("p", body, (("sms", D(1)),))
    one = len(bill.head) + len(bill.rest) + len(body) + 1 + len("sms") + 200
    bills = RenderedBills(max_bytes=3 * one + one // 2, max_entry=one)
    kept = [bills.get("p", body, (("sms", D(n)),)) for n in (1, 2, 3)]
    assert len(bills) == 3
    assert bills.get("p", body, (("sms", D(1)),)) is kept[0]  # 1 is now the most recent
    bills.get("p", body, (("sms", D(4)),))  # over budget: 2, the least recent, goes
    assert len(bills) == 3
    assert bills.bytes <= bills.max_bytes
    assert bills.get("p", body, (("sms", D(1)),)) is kept[0]
    assert bills.get("p", body, (("sms", D(3)),)) is kept[2]
    assert bills.get("p", body, (("sms", D(2)),)) is not kept[1]  # rendered again


def test_an_entry_bigger_than_its_share_is_rendered_and_not_kept() -> None:
    bills = RenderedBills(max_bytes=64 * 1024)
    big = plan_text("1", name="x" * 256, fixed_fees=[{"description": "f" * 256, "amount": "1"}] * 5)
    assert len(big) > bills.max_entry == 1024
    bill = bills.get("p", big, (("sms", D(1)),))
    assert b'"total":"6.00"' in bill.rest
    assert len(bills) == 0
    assert bills.bytes == 0


def test_only_plans_up_to_the_limit_stay_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rendered_bills, "_PLAN_KEPT_BYTES", 200)
    rendered_bills._parsed.cache_clear()
    small, large = plan_text("1"), plan_text("1", name="n" * 200)
    assert len(small) <= 200 < len(large)
    render("p", small, ())
    render("p", large, ())
    render("p", large, ())
    info = rendered_bills._parsed.cache_info()
    assert (info.currsize, info.misses) == (1, 1)
