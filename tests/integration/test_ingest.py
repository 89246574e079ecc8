"""Ingest against a real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from app.apikeys import Scope
from app.application import create_app
from app.hotpath.bound import month_of_hour
from app.hotpath.keys import TenantKeys, meter_field
from app.settings import Settings
from app.timestamps import hour_of, parse_rfc3339
from tests.conftest import running
from tests.http import client_for
from tests.keys import make_key
from tests.redis_state import snapshot


@dataclass
class Keys:
    admin: str
    ingest: str
    read: str
    other: str


@pytest.fixture
async def keys(database_url: str) -> Keys:
    return Keys(
        admin=await make_key(database_url, "acme", Scope.ADMIN),
        ingest=await make_key(database_url, "acme", Scope.INGEST),
        read=await make_key(database_url, "acme", Scope.READ),
        other=await make_key(database_url, "globex", Scope.ADMIN),
    )


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
TS = iso(NOW)


async def meter(
    redis: aioredis.Redis, customer: str, resource: str, ts: str = TS, tenant: str = "acme"
) -> int:
    value = await redis.hget(
        TenantKeys(tenant).hot(customer), meter_field(resource, hour_of(parse_rfc3339(ts)))
    )
    return int(value or 0)


def event(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "customer_id": "c-42",
        "resource_type": "api_call",
        "quantity": 100,
        "timestamp": TS,
    }
    body.update(overrides)
    return body


async def test_accept_then_duplicate_then_conflict(
    app: Starlette, keys: Keys, redis: aioredis.Redis
) -> None:
    async with client_for(app, keys.ingest) as client:
        first = await client.post("/api/v1/usage", json=event(idempotency_key="evt-1"))
        assert first.status_code == 202
        assert first.json() == {"status": "accepted"}
        again = await client.post(
            "/api/v1/usage", json=event(idempotency_key="evt-1", quantity="100.0")
        )
        assert again.status_code == 200
        assert again.json() == {"status": "duplicate"}
        assert again.headers["Idempotent-Replayed"] == "true"
        # The same key in the header is the same event.
        header = await client.post(
            "/api/v1/usage", json=event(), headers={"Idempotency-Key": "evt-1"}
        )
        assert header.status_code == 200
        for changed in (
            {"quantity": 101},
            {"customer_id": "c-43"},
            {"resource_type": "sms"},
            {"timestamp": iso(NOW + timedelta(seconds=1))},
            {"timestamp": None},
        ):
            conflict = await client.post(
                "/api/v1/usage", json=event(idempotency_key="evt-1", **changed)
            )
            assert conflict.status_code == 422, changed
            assert conflict.json()["error"]["code"] == "idempotency_conflict"
        # Metadata is not compared.
        meta = await client.post(
            "/api/v1/usage", json=event(idempotency_key="evt-1", metadata={"a": 1})
        )
        assert meta.status_code == 200
    assert await meter(redis, "c-42", "api_call") == 100_000_000
    assert await meter(redis, "c-43", "api_call") == 0


async def test_same_instant_in_another_offset_is_the_same_event(
    app: Starlette, keys: Keys, redis: aioredis.Redis
) -> None:
    shifted = (NOW + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    async with client_for(app, keys.ingest) as client:
        assert (
            await client.post("/api/v1/usage", json=event(idempotency_key="tz"))
        ).status_code == 202
        again = await client.post(
            "/api/v1/usage", json=event(idempotency_key="tz", timestamp=shifted)
        )
        assert again.status_code == 200


async def test_fifty_concurrent_requests_one_key_count_once(
    app: Starlette, keys: Keys, redis: aioredis.Redis
) -> None:
    async with client_for(app, keys.ingest) as client:
        responses = await asyncio.gather(
            *(
                client.post("/api/v1/usage", json=event(idempotency_key="race", quantity="2.5"))
                for _ in range(50)
            )
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [202]
    assert await meter(redis, "c-42", "api_call") == 2_500_000


async def test_omitted_timestamp_counts_now_and_compares_as_omitted(
    app: Starlette, keys: Keys, redis: aioredis.Redis
) -> None:
    async with client_for(app, keys.ingest) as client:
        body = {
            "customer_id": "c-1",
            "resource_type": "r",
            "quantity": 1,
            "idempotency_key": "no-ts",
        }
        assert (await client.post("/api/v1/usage", json=body)).status_code == 202
        await asyncio.sleep(0.01)
        assert (await client.post("/api/v1/usage", json=body)).status_code == 200
    now = iso(datetime.now(UTC))
    before = iso(datetime.now(UTC) - timedelta(seconds=5))
    total = await meter(redis, "c-1", "r", now) + (
        await meter(redis, "c-1", "r", before) if before[:13] != now[:13] else 0
    )
    assert total == 1_000_000


async def test_batch_counts_valid_events_and_reports_each(
    app: Starlette, keys: Keys, redis: aioredis.Redis
) -> None:
    batch = {
        "events": [
            event(idempotency_key="b-0", quantity="0.5"),
            event(quantity=0),
            event(idempotency_key="b-0", quantity="0.50"),
            event(idempotency_key="b-0", quantity="0.6"),
            event(customer_id="bad id"),
            event(idempotency_key="b-5", quantity="1.25"),
            event(quantity="1.0000001"),
        ]
    }
    async with client_for(app, keys.admin) as client:
        response = await client.post("/api/v1/usage/batch", json=batch)
    assert response.status_code == 202
    body = response.json()
    assert [r["status"] for r in body["results"]] == [
        "accepted",
        "rejected",
        "duplicate",
        "conflict",
        "rejected",
        "accepted",
        "rejected",
    ]
    assert [r["index"] for r in body["results"]] == list(range(7))
    assert body["results"][1]["error"]["code"] == "invalid_quantity"
    assert body["results"][4]["error"]["code"] == "invalid_customer_id"
    assert body["results"][4]["error"]["field"] == "events[4].customer_id"
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 3)
    assert await meter(redis, "c-42", "api_call") == 1_750_000


async def test_batch_limits(app: Starlette, keys: Keys, redis: aioredis.Redis) -> None:
    before = await snapshot(redis)
    async with client_for(app, keys.ingest) as client:
        too_many = await client.post("/api/v1/usage/batch", json={"events": [event()] * 1001})
        empty = await client.post("/api/v1/usage/batch", json={"events": []})
        extra = await client.post("/api/v1/usage/batch", json={"events": [event()], "x": 1})
    assert too_many.status_code == 422
    assert empty.status_code == 422
    assert extra.status_code == 422
    assert await snapshot(redis) == before


INVALID: list[tuple[str, object, str]] = [
    ("quantity zero", event(quantity=0), "quantity"),
    ("quantity negative", event(quantity=-1), "quantity"),
    ("quantity 7 decimals", event(quantity="0.0000001"), "quantity"),
    ("quantity 7 decimals number", event(quantity=1.1234567), "quantity"),
    ("quantity too large", event(quantity=1_000_000_001), "quantity"),
    ("quantity huge exponent", event(quantity="1e400"), "quantity"),
    ("quantity boolean", event(quantity=True), "quantity"),
    ("quantity missing", {k: v for k, v in event().items() if k != "quantity"}, "quantity"),
    ("quantity text", event(quantity="ten"), "quantity"),
    ("customer empty", event(customer_id=""), "customer_id"),
    ("customer space", event(customer_id="a b"), "customer_id"),
    ("customer slash", event(customer_id="a/b"), "customer_id"),
    ("customer leading dot", event(customer_id=".a"), "customer_id"),
    ("customer too long", event(customer_id="a" * 129), "customer_id"),
    ("customer unicode", event(customer_id="café"), "customer_id"),
    ("customer number", event(customer_id=42), "customer_id"),
    ("resource brace", event(resource_type="a{b}"), "resource_type"),
    ("resource pipe", event(resource_type="a|1"), "resource_type"),
    ("timestamp no offset", event(timestamp="2026-11-23T10:00:00"), "timestamp"),
    ("timestamp garbage", event(timestamp="yesterday"), "timestamp"),
    ("timestamp too old", event(timestamp=iso(NOW - timedelta(days=36))), "timestamp"),
    (
        "timestamp future",
        event(timestamp=iso(datetime.now(UTC) + timedelta(hours=1))),
        "timestamp",
    ),
    ("timestamp bad date", event(timestamp="2026-02-30T00:00:00Z"), "timestamp"),
    ("unknown field", event(units=3), "units"),
    ("metadata not object", event(metadata=[1]), "metadata"),
    ("metadata too big", event(metadata={"x": "y" * 5000}), "metadata"),
    ("idempotency key empty", event(idempotency_key=""), "idempotency_key"),
    ("idempotency key number", event(idempotency_key=5), "idempotency_key"),
    ("body not object", [event()], "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_input_is_422_and_changes_nothing(
    app: Starlette, keys: Keys, redis: aioredis.Redis, case: str, body: object, field: str
) -> None:
    before = await snapshot(redis)
    async with client_for(app, keys.ingest) as client:
        response = await client.post("/api/v1/usage", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"][0]["field"] == field
    assert await snapshot(redis) == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"customer_id": "c", "customer_id": "d", "resource_type": "r", "quantity": 1}',
        b'{"customer_id": "c", "resource_type": "r", "quantity": 1',
        b"",
        b"\xff",
    ],
)
async def test_malformed_json_is_400(
    app: Starlette, keys: Keys, redis: aioredis.Redis, raw: bytes
) -> None:
    before = await snapshot(redis)
    async with client_for(app, keys.ingest) as client:
        response = await client.post(
            "/api/v1/usage", content=raw, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"
    assert await snapshot(redis) == before


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (b'{"customer_id": "c", "resource_type": "r", "quantity": %s}' % constant, field)
        for constant in (b"NaN", b"Infinity", b"-Infinity")
        for field in ("quantity",)
    ]
    + [
        (
            b'{"customer_id": "c", "resource_type": "r", "quantity": 1, "metadata": %s}' % m,
            "metadata",
        )
        for m in (b'{"x": NaN}', b'{"x": [Infinity]}', b'{"x": 1e99999999999999999999}')
    ],
)
async def test_nan_and_infinity_are_422_one_event_at_a_time(
    app: Starlette, keys: Keys, redis: aioredis.Redis, event: bytes, field: str
) -> None:
    # Not JSON, but what json.dumps(float("nan")) writes: CONTRACT §2 lists them as 422.
    before = await snapshot(redis)
    counted = await meter(redis, "c", "r", iso(datetime.now(UTC)))
    async with client_for(app, keys.ingest) as client:
        single = await client.post(
            "/api/v1/usage", content=event, headers={"Content-Type": "application/json"}
        )
        assert single.status_code == 422, single.text
        assert single.json()["error"]["details"][0]["field"] == field
        assert await snapshot(redis) == before
        good = b'{"customer_id": "c", "resource_type": "r", "quantity": 2}'
        batch = await client.post(
            "/api/v1/usage/batch",
            content=b'{"events": [%s, %s]}' % (event, good),
            headers={"Content-Type": "application/json"},
        )
    assert batch.status_code == 202, batch.text
    statuses = [r["status"] for r in batch.json()["results"]]
    assert statuses == ["rejected", "accepted"]
    assert await meter(redis, "c", "r", iso(datetime.now(UTC))) == counted + 2_000_000


async def test_oversize_body_is_413(app: Starlette, keys: Keys, redis: aioredis.Redis) -> None:
    before = await snapshot(redis)
    big = b'{"events": [' + b" " * (2 * 1024 * 1024) + b"]}"

    async def chunks() -> object:  # no Content-Length: the limit applies while reading
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    async with client_for(app, keys.ingest) as client:
        declared = await client.post("/api/v1/usage/batch", content=big)
        streamed = await client.post("/api/v1/usage/batch", content=chunks())  # type: ignore[arg-type]
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert await snapshot(redis) == before


async def test_ids_with_punctuation_and_case_are_separate(
    app: Starlette, keys: Keys, redis: aioredis.Redis
) -> None:
    customers = ["a:b", "a", "a:b:c", "A:B", "x@y.z", "x+y", "x.y", "X.Y", "1-2_3"]
    resources = ["api:call", "api", "API:CALL"]
    async with client_for(app, keys.ingest) as client:
        for i, customer in enumerate(customers):
            for j, resource in enumerate(resources):
                response = await client.post(
                    "/api/v1/usage",
                    json=event(
                        customer_id=customer, resource_type=resource, quantity=i * 10 + j + 1
                    ),
                )
                assert response.status_code == 202
    for i, customer in enumerate(customers):
        for j, resource in enumerate(resources):
            assert await meter(redis, customer, resource) == (i * 10 + j + 1) * 1_000_000


async def test_auth(app: Starlette, keys: Keys) -> None:
    async with client_for(app) as client:
        missing = await client.post("/api/v1/usage", json=event())
        bad = await client.post(
            "/api/v1/usage",
            json=event(),
            headers={"Authorization": "Bearer tly_000000000000_" + "x" * 43},
        )
        garbage = await client.post(
            "/api/v1/usage", json=event(), headers={"Authorization": "Basic abc"}
        )
        wrong_secret = await client.post(
            "/api/v1/usage",
            json=event(),
            headers={
                "Authorization": "Bearer "
                + keys.ingest[:-1]
                + ("B" if keys.ingest.endswith("A") else "A")
            },
        )
        read_scope = await client.post(
            "/api/v1/usage", json=event(), headers={"Authorization": f"Bearer {keys.read}"}
        )
    for response in (missing, bad, garbage, wrong_secret):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert read_scope.status_code == 403


async def test_tenants_are_separate(app: Starlette, keys: Keys, redis: aioredis.Redis) -> None:
    async with client_for(app, keys.ingest) as acme, client_for(app, keys.other) as globex:
        assert (
            await acme.post("/api/v1/usage", json=event(idempotency_key="k"))
        ).status_code == 202
        # The same key in another tenant is another event.
        assert (
            await globex.post("/api/v1/usage", json=event(idempotency_key="k"))
        ).status_code == 202
    assert await meter(redis, "c-42", "api_call") == 100_000_000
    assert await meter(redis, "c-42", "api_call", tenant="globex") == 100_000_000


async def test_hourly_overflow_is_refused_before_writing(
    app: Starlette, keys: Keys, redis: aioredis.Redis
) -> None:
    async with client_for(app, keys.ingest) as client:
        full = {"events": [event(quantity=1_000_000_000)] * 1000}
        response = await client.post("/api/v1/usage/batch", json=full)
        assert response.json()["accepted"] == 1000
        before = await snapshot(redis)
        over = await client.post(
            "/api/v1/usage", json=event(quantity="0.000001", idempotency_key="over")
        )
        assert over.status_code == 422
        assert over.json()["error"]["code"] == "quantity_overflow"
        after = await snapshot(redis)
        # Nothing counted, no key claimed. The month is full, so deciding needed the hour's
        # own total: it is now kept beside the month's (app/hotpath/bound.py), and exact.
        hour = hour_of(parse_rfc3339(TS))
        totals = after[TenantKeys("acme").totals("c-42", month_of_hour(hour)[0]).encode()]
        assert isinstance(totals, dict)
        assert totals.pop(meter_field("api_call", hour).encode()) == b"1000000000000000000"
        assert after == before
        # Another hour of the same customer still counts.
        other_hour = iso(NOW - timedelta(hours=1))
        ok = await client.post("/api/v1/usage", json=event(timestamp=other_hour))
        assert ok.status_code == 202
    assert await meter(redis, "c-42", "api_call") == 10**18


async def test_rate_limit_answers_429_with_retry_after(
    settings: Settings, keys: Keys, redis: aioredis.Redis
) -> None:
    limited = create_app(dataclasses.replace(settings, rate_limit=Decimal("3")))
    async with running(limited), client_for(limited, keys.ingest) as client:
        statuses = [
            (await client.post("/api/v1/usage", json=event())).status_code for _ in range(5)
        ]
        refused = await client.post("/api/v1/usage", json=event())
    assert statuses[:3] == [202, 202, 202]
    assert 429 in statuses[3:]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
