"""Bills rendered once per (stored plan, quantities), within a byte budget."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import Any

import pytest

from app import jsonio, rendered_bills
from app.api.body import MAX_BODY_BYTES
from app.plans import Plan, parse_plan
from app.pricing import bill_to_json, price_bill
from app.rendered_bills import ByteBoundedLRU, RenderedBills

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
    # Equal quantities, written otherwise: the same bill.
    assert bills.get("p", cheap, (("sms", D("10.000000")),)) is first
    assert b'"total":"10.00"' in first.rest
    # The same plan id with another stored document, and other quantities: priced afresh.
    assert b'"total":"20.00"' in bills.get("p", dear, (("sms", D(10)),)).rest
    assert b'"total":"11.00"' in bills.get("p", cheap, (("sms", D(11)),)).rest
    assert len(bills.bills) == 3
    assert first.currency == "EUR"
    assert first.estimated_bill == 10
    assert first.plan_id == "p"


def test_kept_bills_stay_within_the_byte_budget_least_recently_used_first() -> None:
    body = plan_text("1")
    one = RenderedBills()
    one.get("p", body, (("sms", D(1)),))
    size = one.bills.bytes  # what one such entry is counted as
    bills = RenderedBills(max_bytes=3 * size + size // 2, max_entry=size)
    kept = [bills.get("p", body, (("sms", D(n)),)) for n in (1, 2, 3)]
    assert len(bills.bills) == 3
    assert bills.get("p", body, (("sms", D(1)),)) is kept[0]  # 1 is now the most recent
    bills.get("p", body, (("sms", D(4)),))  # over budget: 2, the least recent, goes
    assert len(bills.bills) == 3
    assert bills.bills.bytes == 3 * size <= bills.bills.max_bytes
    assert bills.get("p", body, (("sms", D(1)),)) is kept[0]
    assert bills.get("p", body, (("sms", D(3)),)) is kept[2]
    assert bills.get("p", body, (("sms", D(2)),)) is not kept[1]  # rendered again


def test_an_entry_bigger_than_its_share_is_rendered_and_not_kept() -> None:
    bills = RenderedBills(max_bytes=64 * 1024)
    big = plan_text("1", name="x" * 256, fixed_fees=[{"description": "f" * 256, "amount": "1"}] * 5)
    assert len(big) > bills.bills.max_entry == 1024
    bill = bills.get("p", big, (("sms", D(1)),))
    assert b'"total":"6.00"' in bill.rest
    assert len(bills.bills) == 0
    assert bills.bills.bytes == 0
    assert len(bills.plans) == 1  # its plan is kept: it fits the plans' budget


def test_plans_are_parsed_once_within_their_own_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []

    def counting(plan_id: str, body: object) -> Plan:
        parsed.append(plan_id)
        return parse_plan(plan_id, body)

    monkeypatch.setattr(rendered_bills, "parse_plan", counting)
    small, large = plan_text("1"), plan_text("1", name="n" * 200)
    # Plans are counted at 8 bytes per byte of document: the large one is over half.
    bills = RenderedBills(plan_bytes=2 * 8 * (len(small) + 100))
    for n in range(3):  # other quantities each time: no kept bill answers
        bills.get("s", small, (("sms", D(n)),))
        bills.get("l", large, (("sms", D(n)),))
    assert parsed == ["s", "l", "l", "l"]
    assert len(bills.plans) == 1
    # Another document under the same id is parsed again, and priced by it.
    dearer = plan_text("2")
    assert b'"total":"20.00"' in bills.get("s", dearer, (("sms", D(10)),)).rest
    assert parsed[-1] == "s"


def test_the_lru_keeps_what_fits() -> None:
    lru: ByteBoundedLRU[str, int] = ByteBoundedLRU(max_bytes=10, max_entry=6)
    lru.put("a", 1, 4)
    lru.put("b", 2, 4)
    lru.put("c", 3, 7)  # over max_entry: not kept
    assert (lru.get("c"), len(lru), lru.bytes) == (None, 2, 8)
    assert lru.get("a") == 1
    lru.put("d", 4, 4)  # 12 > 10: "b", the least recently used, goes
    assert (lru.get("b"), lru.get("a"), lru.get("d"), lru.bytes) == (None, 1, 4, 8)
    lru.put("a", 5, 4)  # already kept: unchanged, not counted twice
    assert (lru.get("a"), lru.bytes) == (1, 8)


def test_the_biggest_plan_a_request_can_store_is_kept_parsed() -> None:
    # A plan's request is at most 2 MiB (app/api/body.py); as jsonb text it grows by a
    # space after each ',' and ':'. Even at 1.25 times that, its parse must fit.
    biggest = "x" * int(MAX_BODY_BYTES * 1.25)
    assert rendered_bills._PLAN_PER_BYTE * sys.getsizeof(biggest) <= RenderedBills().plans.max_entry
