"""Customers, plans, bills and usage reads through the API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from app import jsonio, rendered_bills
from app.apikeys import Scope
from app.plans import parse_plan
from app.pricing import bill_to_json, price_bill
from app.rendered_bills import render
from app.repo.pool import create_pool
from app.settings import Settings
from app.worker.flusher import Flusher
from tests.http import client_for
from tests.keys import make_key

PRO = {
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
    ],
}


@dataclass
class Keys:
    admin: str
    read: str
    bound: str
    ingest: str
    other: str


@pytest.fixture
async def keys(database_url: str) -> Keys:
    return Keys(
        admin=await make_key(database_url, "shop", Scope.ADMIN),
        read=await make_key(database_url, "shop", Scope.READ),
        bound=await make_key(database_url, "shop", Scope.READ, "c-42"),
        ingest=await make_key(database_url, "shop", Scope.INGEST),
        other=await make_key(database_url, "rival", Scope.ADMIN),
    )


NOW = datetime.now(UTC)
TS = NOW.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


async def post(
    app: Starlette, key: str, customer: str, resource: str, quantity: object, ts: str = TS
) -> None:
    async with client_for(app, key) as client:
        response = await client.post(
            "/api/v1/usage",
            json={
                "customer_id": customer,
                "resource_type": resource,
                "quantity": quantity,
                "timestamp": ts,
            },
        )
    assert response.status_code == 202, response.text


async def flush(settings: Settings, redis: aioredis.Redis) -> None:
    pool = await create_pool(settings)
    try:
        await Flusher(settings, redis, pool).flush_all(lease_wait=0)
    finally:
        await pool.close()


async def test_contract_example_bill(
    app: Starlette, keys: Keys, settings: Settings, redis: aioredis.Redis
) -> None:
    async with client_for(app, keys.admin) as admin:
        created = await admin.put("/api/v1/plans/pro", json=PRO)
        assert created.status_code == 201, created.text
        assert (await admin.put("/api/v1/plans/pro", json=PRO)).status_code == 200
        customer = await admin.put(
            "/api/v1/customers/c-42", json={"plan_id": "pro", "name": "Acme"}
        )
        assert customer.status_code == 201
    await post(app, keys.ingest, "c-42", "api_call", 10)
    await flush(settings, redis)  # part cold ...
    await post(app, keys.ingest, "c-42", "api_call", "15")  # ... part hot
    async with client_for(app, keys.read) as reader:
        response = await reader.get("/api/v1/billing/c-42")
    assert response.status_code == 200, response.text
    bill = response.json()
    assert bill["customer_id"] == "c-42"
    assert bill["currency"] == "USD"
    assert bill["plan_id"] == "pro"
    assert bill["estimated_bill"] == 177.5
    assert '"estimated_bill":177.5' in response.text
    assert bill["subtotal"] == "177.50"
    assert bill["total"] == "177.50"
    assert bill["discount"] == "0.00"
    assert bill["minimum_topup"] == "0.00"
    api = next(line for line in bill["lines"] if line.get("resource_type") == "api_call")
    assert api["quantity"] == "25"
    assert api["amount"] == "157.50"
    assert api["tiers"][0] == {
        "from": "0",
        "up_to": "5",
        "quantity": "5",
        "unit_price": "7",
        "flat_fee": "0",
        "amount": "35",
    }
    seats = next(line for line in bill["lines"] if line.get("resource_type") == "seats")
    assert seats["amount"] == "0.00"
    assert {"type": "fixed_fee", "description": "Platform fee", "amount": "20.00"} in bill["lines"]
    period = bill["period"]
    assert period["start"] == NOW.strftime("%Y-%m-01T00:00:00Z")


async def test_a_bill_is_priced_again_when_its_plan_or_usage_changes(
    app: Starlette, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bills are rendered once per (stored plan, quantities) and kept: the same read again
    # is the same bytes, a changed plan or more usage is a new bill, and the kept rendering
    # is what one JSON document of the whole bill would be, key order included.
    renders: list[object] = []

    def counted(*args: Any) -> rendered_bills.RenderedBill:
        renders.append(args)
        return render(*args)

    monkeypatch.setattr(rendered_bills, "render", counted)
    cheap = {**PRO, "fixed_fees": [], "prices": [PRO["prices"][1]]}
    async with client_for(app, keys.admin) as admin:
        assert (await admin.put("/api/v1/plans/p-memo", json=PRO)).status_code == 201
        assert (
            await admin.put("/api/v1/customers/c-memo", json={"plan_id": "p-memo"})
        ).status_code == 201
    await post(app, keys.ingest, "c-memo", "api_call", "12.5")
    await post(app, keys.ingest, "c-memo", "seats", 4)

    async def bill() -> tuple[str, dict[str, object]]:
        async with client_for(app, keys.read) as reader:
            response = await reader.get("/api/v1/billing/c-memo")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return response.text, response.json()

    first_text, first = await bill()
    again_text, again = await bill()
    assert len(renders) == 1  # the second bill was read, not priced again
    assert again_text.replace(str(again["as_of"]), "") == first_text.replace(
        str(first["as_of"]), ""
    )
    quantities = {"api_call": Decimal("12.5"), "seats": Decimal(4)}
    priced = bill_to_json(price_bill(parse_plan("p-memo", PRO), quantities))
    whole = {
        "customer_id": "c-memo",
        "currency": priced.pop("currency"),
        "estimated_bill": priced.pop("estimated_bill"),
        "plan_id": "p-memo",
        "period": first["period"],
        "as_of": first["as_of"],
        **priced,
    }
    assert first_text.encode() == jsonio.dumps(whole)
    assert first["total"] == "112.50"  # 35 + 32.5 + 15, one seat past 3 free, 20 fee

    async with client_for(app, keys.admin) as admin:
        assert (await admin.put("/api/v1/plans/p-memo", json=cheap)).status_code == 200
    _, repriced = await bill()
    assert repriced["total"] == "10.00"  # one seat past the 3 free, no fee
    await post(app, keys.ingest, "c-memo", "seats", 1)
    _, more = await bill()
    assert more["total"] == "20.00"
    async with client_for(app, keys.admin) as admin:
        assert (await admin.put("/api/v1/plans/p-memo", json=PRO)).status_code == 200
    _, back = await bill()
    assert back["total"] == "122.50"
    assert len(renders) == 4


async def test_customer_without_plan_and_created_after_usage(
    app: Starlette, keys: Keys, settings: Settings, redis: aioredis.Redis
) -> None:
    await post(app, keys.ingest, "late", "sms", "0.5")
    async with client_for(app, keys.read) as reader:
        response = await reader.get("/api/v1/billing/late")
        assert response.status_code == 200
        bill = response.json()
        assert bill["plan_id"] is None
        assert bill["currency"] is None
        assert bill["lines"][0]["amount"] == "0"
        assert bill["lines"][0]["quantity"] == "0.5"
        assert (await reader.get("/api/v1/billing/nobody")).status_code == 404
    async with client_for(app, keys.admin) as admin:
        assert (
            await admin.put(
                "/api/v1/plans/sms",
                json={
                    "currency": "EUR",
                    "prices": [
                        {
                            "resource_type": "sms",
                            "model": "package",
                            "package_size": "100",
                            "package_price": "5",
                        }
                    ],
                },
            )
        ).status_code == 201
        assert (
            await admin.put("/api/v1/customers/late", json={"plan_id": "sms"})
        ).status_code == 201
        bill = (await admin.get("/api/v1/billing/late")).json()
    assert bill["currency"] == "EUR"
    assert bill["total"] == "5.00"


async def test_previous_month_bill(
    app: Starlette, keys: Keys, settings: Settings, redis: aioredis.Redis
) -> None:
    first_of_month = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = first_of_month - timedelta(hours=1)  # always within the 35-day window
    ts = last_month.strftime("%Y-%m-%dT%H:%M:%SZ")
    await post(app, keys.ingest, "c-prev", "api_call", 3, ts=ts)
    await post(app, keys.ingest, "c-prev", "api_call", 4)
    period = last_month.strftime("%Y-%m")
    async with client_for(app, keys.read) as reader:
        before = (await reader.get(f"/api/v1/billing/c-prev?period={period}")).json()
        await flush(settings, redis)
        after = (await reader.get(f"/api/v1/billing/c-prev?period={period}")).json()
        current = (await reader.get("/api/v1/billing/c-prev")).json()
        bad = await reader.get("/api/v1/billing/c-prev?period=2026-13")
    assert before["lines"][0]["quantity"] == after["lines"][0]["quantity"] == "3"
    assert current["lines"][0]["quantity"] == "4"
    assert bad.status_code == 422


async def test_usage_series(
    app: Starlette, keys: Keys, settings: Settings, redis: aioredis.Redis
) -> None:
    hour = NOW.replace(minute=0, second=0, microsecond=0)
    earlier = hour - timedelta(hours=2)
    await post(app, keys.ingest, "c-u", "gb", "1.5", ts=earlier.strftime("%Y-%m-%dT%H:%M:%SZ"))
    await flush(settings, redis)
    await post(app, keys.ingest, "c-u", "gb", "0.25")
    start = (earlier - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (hour + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with client_for(app, keys.read) as reader:
        hourly = (
            await reader.get(
                "/api/v1/usage/c-u", params={"from": start, "to": end, "granularity": "hour"}
            )
        ).json()
        narrow = (
            await reader.get(
                "/api/v1/usage/c-u",
                params={
                    "from": hour.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "to": end,
                    "granularity": "hour",
                },
            )
        ).json()
        too_long = await reader.get(
            "/api/v1/usage/c-u",
            params={"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"},
        )
    points = hourly["series"][0]["points"]
    assert [p["quantity"] for p in points] == ["1.5", "0.25"]
    assert points[0]["start"] == earlier.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [p["quantity"] for p in narrow["series"][0]["points"]] == ["0.25"]
    assert too_long.status_code == 422


async def test_usage_range_bounds_are_exact_to_the_nanosecond(app: Starlette, keys: Keys) -> None:
    # An hour counts when its start lies in [from, to): 100 ns either side of an hour's
    # start moves it out of or into range, and 100 days + 100 ns is too long.
    hour = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    await post(app, keys.ingest, "c-ns", "gb", "2", ts=hour.strftime("%Y-%m-%dT%H:%M:%SZ"))
    at = hour.strftime("%Y-%m-%dT%H:%M:%S")
    before, after = hour - timedelta(hours=1), hour + timedelta(hours=1)

    async def quantities(start: str, end: str) -> list[str]:
        async with client_for(app, keys.read) as reader:
            response = await reader.get(
                "/api/v1/usage/c-ns", params={"from": start, "to": end, "granularity": "hour"}
            )
        assert response.status_code == 200, response.text
        return [p["quantity"] for s in response.json()["series"] for p in s["points"]]

    z = "%Y-%m-%dT%H:%M:%SZ"
    assert await quantities(f"{at}.0000001Z", after.strftime(z)) == []
    assert await quantities(f"{at}Z", after.strftime(z)) == ["2"]
    assert await quantities(before.strftime(z), f"{at}.0000001Z") == ["2"]
    assert await quantities(before.strftime(z), f"{at}Z") == []
    async with client_for(app, keys.read) as reader:
        too_long = await reader.get(
            "/api/v1/usage/c-ns",
            params={"from": "2026-09-01T00:00:00Z", "to": "2026-12-10T00:00:00.0000001Z"},
        )
        longest = await reader.get(
            "/api/v1/usage/c-ns",
            params={"from": "2026-09-01T00:00:00Z", "to": "2026-12-10T00:00:00Z"},
        )
    assert too_long.status_code == 422
    assert longest.status_code == 200


async def test_read_scopes_and_tenants(app: Starlette, keys: Keys) -> None:
    await post(app, keys.ingest, "c-42", "api_call", 1)
    await post(app, keys.ingest, "c-43", "api_call", 1)
    async with client_for(app, keys.bound) as bound:
        assert (await bound.get("/api/v1/billing/c-42")).status_code == 200
        assert (await bound.get("/api/v1/billing/c-43")).status_code == 404
        assert (await bound.get("/api/v1/usage/c-43")).status_code == 404
    async with client_for(app, keys.other) as rival:
        assert (await rival.get("/api/v1/billing/c-42")).status_code == 404
    async with client_for(app, keys.ingest) as ingest:
        assert (await ingest.get("/api/v1/billing/c-42")).status_code == 403
    async with client_for(app, keys.read) as reader:
        assert (await reader.put("/api/v1/plans/x", json=PRO)).status_code == 403
        assert (await reader.get("/api/v1/billing/bad%20id")).status_code == 422
        assert (await reader.get("/api/v1/billing/c%3A1")).status_code == 404


async def test_an_encoded_slash_stays_in_its_segment_and_is_refused(
    app: Starlette, keys: Keys
) -> None:
    # CONTRACT §2: an identifier is one path segment, decoded once; "a/b" is not a valid
    # identifier (422), and "cx%2F" must not be taken for customer cx.
    await post(app, keys.ingest, "cx", "api_call", 1)
    async with client_for(app, keys.admin) as admin:
        for path in ("/api/v1/usage/a%2Fb", "/api/v1/billing/cx%2F", "/api/v1/billing/cx%2f"):
            response = await admin.get(path)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["error"]["details"][0]["field"] == "customer_id"
        created = await admin.put("/api/v1/customers/cx%2F", json={"name": "X"})
        assert created.status_code == 422, created.text
        assert (await admin.get("/api/v1/customers/cx")).status_code == 404
        # A trailing slash: a JSON 404, not an empty redirect to another resource.
        trailing = await admin.get("/api/v1/billing/cx/")
        assert trailing.status_code == 404
        assert trailing.json()["error"]["code"] == "not_found"
        assert (await admin.get("/api/v1/billing/cx")).status_code == 200


async def test_invalid_plans_name_the_field(app: Starlette, keys: Keys) -> None:
    cases = [
        ({**PRO, "currency": "XYZ"}, "currency"),
        (
            {
                **PRO,
                "prices": [
                    {
                        "resource_type": "a",
                        "model": "graduated",
                        "tiers": [
                            {"up_to": "10", "unit_price": "1"},
                            {"up_to": "5", "unit_price": "1"},
                            {"up_to": None, "unit_price": "1"},
                        ],
                    }
                ],
            },
            "prices[0].tiers[1].up_to",
        ),
        ({**PRO, "prices": [{"resource_type": "a", "model": "magic"}]}, "prices[0].model"),
        (
            {**PRO, "prices": [{"resource_type": "a", "model": "per_unit", "unit_price": "-1"}]},
            "prices[0].unit_price",
        ),
    ]
    async with client_for(app, keys.admin) as admin:
        for body, field in cases:
            response = await admin.put("/api/v1/plans/bad", json=body)
            assert response.status_code == 422, body
            assert field in [d["field"] for d in response.json()["error"]["details"]]
        assert (await admin.get("/api/v1/plans/bad")).status_code == 404
        unknown = await admin.put("/api/v1/customers/c-1", json={"plan_id": "nope"})
        assert unknown.status_code == 422


async def test_a_plan_reads_back_as_its_put_answered_it(app: Starlette, keys: Keys) -> None:
    # Stored as jsonb, whose member order is its own; a read answers the PUT's document.
    async with client_for(app, keys.admin) as admin:
        put = await admin.put("/api/v1/plans/echo", json=PRO)
        got = await admin.get("/api/v1/plans/echo")
        listed = (await admin.get("/api/v1/plans")).json()["data"]
    assert put.status_code == 201
    assert got.status_code == 200
    assert got.content == put.content
    (entry,) = [p for p in listed if p["plan_id"] == "echo"]
    assert json.dumps(entry) == json.dumps(put.json())  # same members in the same order


async def test_customer_listing_with_cursor(app: Starlette, keys: Keys) -> None:
    async with client_for(app, keys.admin) as admin:
        for i in range(5):
            await admin.put(f"/api/v1/customers/list-{i}", json={"name": f"n{i}"})
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
            page = (await admin.get("/api/v1/customers", params=params)).json()
            seen += [c["customer_id"] for c in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        updated = await admin.put("/api/v1/customers/list-0", json={"email": "a@b.c"})
        assert updated.status_code == 200
        assert updated.json()["name"] == "n0"
        for i in range(60):
            await admin.put(f"/api/v1/plans/p{i:02}", json={**PRO, "name": f"listed-{i:02}"})
        plans = (await admin.get("/api/v1/plans")).json()
        paged = (await admin.get("/api/v1/plans", params={"limit": "50"})).json()
    assert [s for s in seen if s.startswith("list-")] == [f"list-{i}" for i in range(5)]
    # The contract's GET /api/v1/plans has no paging: every plan, no cursor.
    assert [p["name"] for p in plans["data"] if p["name"].startswith("listed-")] == [
        f"listed-{i:02}" for i in range(60)
    ]
    assert plans["next_cursor"] is None
    assert len(paged["data"]) == 50
    assert paged["next_cursor"] is not None
