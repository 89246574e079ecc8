"""The OpenAPI document: structurally valid 3.1, matching the route table, and true.

No OpenAPI validator is installed, so the structure is checked here, and the schemas are
checked by a small JSON Schema validator (the keywords the document uses, nothing more)
against what the real handlers answer, with their storage faked.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from app import jsonio
from app.api import billing, catalog, usage
from app.apikeys import Scope
from app.application import routes
from app.auth import Principal
from app.errors import ApiError
from app.hotpath.ingest import Outcome
from app.openapi import COMPONENTS, openapi_document
from app.plans import parse_plan, plan_to_json
from app.rendered_bills import RenderedBills
from app.repo import customers as customers_repo
from app.repo.customers import CustomerRecord
from app.timestamps import hour_of, parse_rfc3339
from app.usage_reads import CustomerUsage

pytestmark = pytest.mark.unit

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Documented and served, but not (yet) by a route in app.application.routes().
SERVED_OUTSIDE_ROUTES = {"/metrics"}

DOC = openapi_document()


# --- structure -------------------------------------------------------------------------


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def test_document_is_openapi_3_1_and_json() -> None:
    assert re.fullmatch(r"3\.1\.\d+", DOC["openapi"])
    assert DOC["info"]["title"]
    assert DOC["info"]["version"]
    assert jsonio.loads(jsonio.dumps(DOC)) == jsonio.loads(jsonio.dumps(openapi_document()))
    for path, item in DOC["paths"].items():
        assert path.startswith("/")
        assert set(item) <= HTTP_METHODS | {"parameters", "summary", "description"}, path


def test_every_route_is_documented_with_its_methods_and_nothing_else() -> None:
    routed: dict[str, set[str]] = {}
    for route in routes():
        assert isinstance(route, Route)
        routed.setdefault(route.path, set()).update((route.methods or set()) - {"HEAD"})
    documented = {
        path: {m.upper() for m in item if m in HTTP_METHODS} for path, item in DOC["paths"].items()
    }
    unrouted = set(documented) - set(routed)
    assert unrouted <= SERVED_OUTSIDE_ROUTES
    assert {p: m for p, m in documented.items() if p not in unrouted} == routed


def test_operation_ids_are_unique_and_every_operation_answers_something() -> None:
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations():
        assert operation["responses"], (path, method)
        for status, response in operation["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d|default", status), (path, method, status)
            assert response["description"], (path, method, status)
            for media in response.get("content", {}).values():
                assert "schema" in media


def test_path_parameters_match_the_template() -> None:
    for path, method, operation in operations():
        params = [*DOC["paths"][path].get("parameters", []), *operation.get("parameters", [])]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == set(re.findall(r"{([^}]+)}", path)), (path, method)
        for param in params:
            assert param["in"] in {"path", "query", "header", "cookie"}
            assert "schema" in param
            if param["in"] == "path":
                assert param["required"] is True
                assert param["schema"] == {"$ref": "#/components/schemas/Identifier"}


def test_api_routes_need_a_bearer_key_and_may_be_rate_limited() -> None:
    assert COMPONENTS["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for path, method, operation in operations():
        if path.startswith("/api/v1/"):
            assert operation["security"] == [{"bearer": []}], (path, method)
            assert {"401", "403", "429", "503"} <= set(operation["responses"]), (path, method)
            assert operation["responses"]["429"]["headers"]["Retry-After"]["required"] is True
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= set(operation["responses"]), (path, method)
        else:
            assert "security" not in operation


def walk(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_ref_resolves_and_every_schema_is_used() -> None:
    refs = {node["$ref"] for _, node in walk(DOC) if isinstance(node, dict) and "$ref" in node}
    for ref in refs:
        assert isinstance(resolve(ref), dict), ref
    mapped = {
        target
        for _, node in walk(DOC)
        if isinstance(node, dict) and "discriminator" in node
        for target in node["discriminator"].get("mapping", {}).values()
    }
    for target in mapped:
        resolve(target)
    unused = {f"#/components/schemas/{name}" for name in COMPONENTS["schemas"]} - refs
    assert not unused


# --- a JSON Schema validator for the keywords the document uses ---------------------------

ANNOTATIONS = {"description", "title", "default", "discriminator", "format"}
KEYWORDS = ANNOTATIONS | {
    "$ref",
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "anyOf",
    "oneOf",
}
TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "number": lambda v: isinstance(v, int | Decimal) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int | Decimal) and not isinstance(v, bool) and v == int(v),
}


def schemas_in_document() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, schema in COMPONENTS["schemas"].items():
        yield from sub_schemas(schema, f"components/schemas/{name}")
    for path, method, operation in operations():
        for param in operation.get("parameters", []):
            yield from sub_schemas(param["schema"], f"{method} {path} {param['name']}")
        bodies = [operation.get("requestBody", {}), *operation["responses"].values()]
        for body in bodies:
            for media in body.get("content", {}).values():
                yield from sub_schemas(media["schema"], f"{method} {path}")
            for name, header in body.get("headers", {}).items():
                yield from sub_schemas(header["schema"], f"{method} {path} {name}")


def sub_schemas(schema: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield where, schema
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from sub_schemas(schema[key], f"{where}/{key}")
    for name, sub in schema.get("properties", {}).items():
        yield from sub_schemas(sub, f"{where}/{name}")
    for key in ("anyOf", "oneOf"):
        for index, sub in enumerate(schema.get(key, [])):
            yield from sub_schemas(sub, f"{where}/{key}/{index}")


def test_schemas_use_only_keywords_the_validator_knows() -> None:
    for where, schema in schemas_in_document():
        assert set(schema) <= KEYWORDS, (where, set(schema) - KEYWORDS)
        for pattern in [schema["pattern"]] if "pattern" in schema else []:
            re.compile(pattern)
        if "required" in schema:
            assert set(schema["required"]) <= set(schema.get("properties", {})), where


def problems(schema: dict[str, Any], value: Any, where: str = "$") -> list[str]:
    """Why ``value`` does not match ``schema`` (empty when it does)."""
    if "$ref" in schema:
        found = problems(resolve(schema["$ref"]), value, where)
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return found + problems(rest, value, where)
    out: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(TYPES[kind](value) for kind in kinds):
            return [f"{where}: {value!r} is not {kinds}"]
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and not _same(value, schema["const"]):
        out.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "anyOf" in schema and all(problems(s, value, where) for s in schema["anyOf"]):
        out.append(f"{where}: {value!r} matches none of anyOf")
    if "oneOf" in schema:
        matching = sum(not problems(s, value, where) for s in schema["oneOf"])
        if matching != 1:
            out.append(f"{where}: {value!r} matches {matching} of oneOf")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{where}: {k} is missing" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in props:
                out += problems(props[key], item, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{where}: {key} is not allowed")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            out.append(f"{where}: {len(value)} items")
        for index, item in enumerate(value):
            out += problems(schema.get("items", {}), item, f"{where}[{index}]")
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            out.append(f"{where}: length {len(value)}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time":
            try:
                parse_rfc3339(value)
            except ValueError:
                out.append(f"{where}: {value!r} is not a date-time")
    if TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: {value} > {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            out.append(f"{where}: {value} >= {schema['exclusiveMaximum']}")
    return out


def _same(a: Any, b: Any) -> bool:
    if TYPES["number"](a) and TYPES["number"](b):
        return bool(a == b)
    return type(a) is type(b) and a == b


def test_the_validator_refuses_what_it_should() -> None:
    event = resolve("#/components/schemas/UsageEvent")
    assert not problems(event, {"customer_id": "c", "resource_type": "r", "quantity": 1})
    assert problems(event, {"customer_id": "c", "resource_type": "r"})
    assert problems(event, {"customer_id": "c", "resource_type": "r", "quantity": 1, "x": 1})
    assert problems(event, {"customer_id": "-c", "resource_type": "r", "quantity": "1"})
    assert problems(event, {"customer_id": "c", "resource_type": "r", "quantity": True})
    assert problems(event, {"customer_id": "c", "resource_type": "r", "quantity": "1.1234567"})
    assert problems(event, {"customer_id": "c", "resource_type": "r", "quantity": 0})


# --- request schemas agree with the handlers' parsers ------------------------------------

CONTRACT_EVENT = {
    "customer_id": "c-42",
    "resource_type": "api_call",
    "quantity": 100,
    "timestamp": "2026-11-23T10:00:00Z",
    "idempotency_key": "evt_81f3",
    "metadata": {},
}
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
        {"resource_type": "sms", "model": "package", "package_size": "100", "package_price": 5},
        {
            "resource_type": "gb",
            "model": "volume",
            "tiers": [{"up_to": 100, "unit_price": Decimal("0.5")}, {"up_to": None}],
        },
        {
            "resource_type": "msgs",
            "model": "stair_step",
            "tiers": [{"up_to": "1000", "flat_fee": "50"}, {"up_to": None, "flat_fee": "80"}],
        },
    ],
    "discounts": [
        {"description": "Launch", "percent": "10"},
        {"description": "Credit", "amount": "5.00"},
    ],
    "minimum_commitment": "100.00",
}


def schema(name: str) -> dict[str, Any]:
    found: dict[str, Any] = COMPONENTS["schemas"][name]
    return found


def test_contract_examples_are_valid_requests() -> None:
    assert not problems(schema("UsageEvent"), CONTRACT_EVENT)
    assert not problems(schema("BatchRequest"), {"events": [CONTRACT_EVENT]})
    assert not problems(schema("PlanInput"), CONTRACT_PLAN)
    parse_plan("pro", CONTRACT_PLAN)  # the handler takes it too


def test_a_stored_plan_can_be_put_back() -> None:
    stored = plan_to_json(parse_plan("pro", CONTRACT_PLAN))
    assert not problems(schema("Plan"), stored)
    assert not problems(schema("PlanInput"), stored)


def test_a_stored_plan_with_an_unnamed_discount_can_be_put_back() -> None:
    body = {**CONTRACT_PLAN, "discounts": [{"amount": "5.00"}]}
    assert not problems(schema("PlanInput"), body)
    stored = plan_to_json(parse_plan("pro", body))
    assert stored["discounts"] == [{"amount": "5.00"}]
    # The response schema allows what the API answers (Schemathesis at 200 examples found
    # it required a description).
    assert not problems(schema("Plan"), stored)
    parse_plan("pro", stored)


@pytest.mark.parametrize(
    "change",
    [
        {"colour": "red"},
        {"currency": "usd"},
        {"prices": [{"resource_type": "a", "model": "per_unit", "tiers": []}]},
        {"prices": [{"resource_type": "a", "model": "flat", "unit_price": "1"}]},
        {"prices": [{"resource_type": "a", "model": "per_unit", "unit_price": "-1"}]},
        {
            "prices": [
                {
                    "resource_type": "a",
                    "model": "stair_step",
                    "tiers": [{"up_to": None, "unit_price": 1}],
                }
            ]
        },
        {"discounts": [{"percent": "10", "amount": "1"}]},
        {"discounts": [{"percent": "101"}]},
        {"discounts": [{"percent": "10.0000001"}]},
        {
            "prices": [
                {"resource_type": "a", "model": "package", "package_size": "0", "package_price": 1}
            ]
        },
        {"minimum_commitment": "1000000000000"},
        {"minimum_commitment": 10**13},
        {"minimum_commitment": "-0"},
    ],
)
def test_plans_the_schema_refuses_the_handler_refuses(change: dict[str, Any]) -> None:
    body = {**CONTRACT_PLAN, **change}
    assert problems(schema("PlanInput"), body)
    with pytest.raises(ValueError, match="invalid plan"):
        parse_plan("pro", body)


# --- response schemas are true to the handlers -------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def make_request(
    path_params: dict[str, str] | None = None,
    *,
    query: str = "",
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    services: Any = None,
) -> Request:
    content = raw if raw is not None else (b"" if body is None else jsonio.dumps(body))
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": content, "more_body": False}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "path_params": path_params or {},
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "app": SimpleNamespace(state=SimpleNamespace(services=services)),
    }
    return Request(scope, receive)


async def answer(
    path: str, method: str, handler: Handler, request: Request
) -> tuple[int, Any, dict[str, str]]:
    """Call the handler and check its answer against the document; return it."""
    try:
        response = await handler(request)
        status, body, headers = (
            response.status_code,
            jsonio.loads(bytes(response.body)),
            dict(response.headers),
        )
    except ApiError as exc:
        body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
        status, headers = exc.status, dict(exc.headers or {})
    documented = DOC["paths"][path][method]["responses"]
    assert str(status) in documented, (status, body)
    declared = documented[str(status)]
    assert not problems(declared["content"]["application/json"]["schema"], body), body
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, header in declared.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in lowered, name
        if name.lower() in lowered:
            assert not problems(header["schema"], lowered[name.lower()])
    return status, body, headers


@pytest.fixture(autouse=True)
def admin(monkeypatch: pytest.MonkeyPatch) -> None:
    async def caller(request: Request, scopes: Any) -> Principal:
        return Principal("key", "tenant", Scope.ADMIN, None)

    for module in (usage, billing, catalog):
        monkeypatch.setattr(module, "caller", caller)


def ingest_services(outcome: Outcome) -> Any:
    async def submit(tenant: str, event: Any) -> Outcome:
        return outcome

    return SimpleNamespace(
        settings=SimpleNamespace(coalesce=True),
        coalescer=SimpleNamespace(submit=submit),
        seeder=None,
        scripts=None,
        idempotency=None,
    )


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome.ACCEPTED, 202),
        (Outcome.DUPLICATE, 200),
        (Outcome.CONFLICT, 422),
        (Outcome.OVERFLOW, 422),
    ],
)
async def test_ingest_answers_are_documented(outcome: Outcome, status: int) -> None:
    assert set(Outcome) == {Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.CONFLICT, Outcome.OVERFLOW}
    event = {**CONTRACT_EVENT, "timestamp": None}
    request = make_request(body=event, services=ingest_services(outcome))
    assert (await answer("/api/v1/usage", "post", usage.ingest_one, request))[0] == status


@pytest.mark.parametrize(
    ("raw", "status"),
    [(b"{", 400), (b"[]", 422), (b'{"customer_id": "c"}', 422), (b"x" * (2**21 + 1), 413)],
)
async def test_ingest_errors_are_documented(raw: bytes, status: int) -> None:
    request = make_request(raw=raw, services=ingest_services(Outcome.ACCEPTED))
    assert (await answer("/api/v1/usage", "post", usage.ingest_one, request))[0] == status


async def test_batch_answer_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    cycle = [Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.CONFLICT, Outcome.OVERFLOW]

    async def apply_events(scripts: Any, tenant: str, events: list[Any], *_: Any, **__: Any) -> Any:
        return [cycle[i % len(cycle)] for i in range(len(events))]

    monkeypatch.setattr(usage, "apply_events", apply_events)
    event = {k: v for k, v in CONTRACT_EVENT.items() if k != "timestamp"}
    events: list[Any] = [event] * 4 + [{"customer_id": "c"}, 7]
    request = make_request(body={"events": events}, services=ingest_services(Outcome.ACCEPTED))
    status, body, _ = await answer("/api/v1/usage/batch", "post", usage.ingest_batch, request)
    assert status == 202
    assert [r["status"] for r in body["results"]] == [
        "accepted",
        "duplicate",
        "conflict",
        "rejected",
        "rejected",
        "rejected",
    ]
    refused: list[dict[str, Any]] = [{"events": []}, {"events": [event] * 1001}, {"x": 1}]
    for bad in refused:
        request = make_request(body=bad, services=ingest_services(Outcome.ACCEPTED))
        assert (await answer("/api/v1/usage/batch", "post", usage.ingest_batch, request))[0] == 422


def customer_usage(*, plan: bool = True, exists: bool = True) -> CustomerUsage:
    hour = hour_of(parse_rfc3339(datetime.now(UTC).strftime("%Y-%m-01T00:00:00Z")))
    quantities = {"api_call": "25", "seats": "4.5", "sms": "250", "gb": "120", "other": "0.1"}
    body = jsonio.dumps(plan_to_json(parse_plan("pro", CONTRACT_PLAN))).decode()
    return CustomerUsage(
        buckets={(rt, hour + i): Decimal(q) for i, (rt, q) in enumerate(quantities.items())},
        exists=exists,
        plan_id="pro" if plan else None,
        plan_body=body if plan else None,
    )


@pytest.mark.parametrize(
    ("reads", "query", "status"),
    [
        (customer_usage(), "", 200),
        (customer_usage(plan=False), "", 200),
        (customer_usage(exists=False), "", 404),
        (customer_usage(), "period=2026-13", 422),
    ],
)
async def test_bill_answers_are_documented(
    monkeypatch: pytest.MonkeyPatch, reads: CustomerUsage, query: str, status: int
) -> None:
    async def read(*_: Any, **__: Any) -> CustomerUsage:
        return reads

    monkeypatch.setattr(billing, "read_customer_usage", read)
    request = make_request(
        {"customer_id": "c-42"},
        query=query,
        # The read is replaced above: bills read one at a time (not shared) go through it.
        services=SimpleNamespace(
            scripts=None,
            pool=None,
            settings=SimpleNamespace(bill_coalesce=False),
            rendered_bills=RenderedBills(),
        ),
    )
    path = "/api/v1/billing/{customer_id}"
    found, body, _ = await answer(path, "get", billing.get_bill, request)
    assert found == status
    if status == 200 and reads.plan_id:
        assert {line["type"] for line in body["lines"]} == {"usage", "fixed_fee"}
        assert any("tiers" in line for line in body["lines"])


@pytest.mark.parametrize(
    ("query", "status"),
    [("granularity=hour", 200), ("", 200), ("granularity=week", 422), ("from=yesterday", 422)],
)
async def test_usage_answers_are_documented(
    monkeypatch: pytest.MonkeyPatch, query: str, status: int
) -> None:
    async def read(*_: Any, **__: Any) -> CustomerUsage:
        return customer_usage()

    monkeypatch.setattr(billing, "read_customer_usage", read)
    request = make_request(
        {"customer_id": "c-42"},
        query=query,
        # The read is replaced above: bills read one at a time (not shared) go through it.
        services=SimpleNamespace(
            scripts=None, pool=None, settings=SimpleNamespace(bill_coalesce=False)
        ),
    )
    path = "/api/v1/usage/{customer_id}"
    found, body, _ = await answer(path, "get", billing.get_usage, request)
    assert found == status
    if status == 200:
        assert body["series"]


RECORD = CustomerRecord(
    "c-42", "Acme", None, "pro", datetime(2026, 11, 1, tzinfo=UTC), datetime.now(UTC)
)
STORED_PLAN = jsonio.dumps(plan_to_json(parse_plan("pro", CONTRACT_PLAN))).decode()


@pytest.fixture
def catalog_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    async def upsert_customer(*_: Any) -> tuple[CustomerRecord, bool]:
        return RECORD, True

    async def found_customer(pool: Any, tenant: str, customer_id: str) -> CustomerRecord | None:
        return RECORD if customer_id == RECORD.customer_id else None

    async def list_customers(*_: Any) -> list[CustomerRecord]:
        return [RECORD, RECORD]

    async def plan_exists(pool: Any, tenant: str, plan_id: str) -> bool:
        return plan_id == "pro"

    async def upsert_plan(*_: Any) -> bool:
        return False

    async def get_plan(pool: Any, tenant: str, plan_id: str) -> str | None:
        return STORED_PLAN if plan_id == "pro" else None

    async def list_plans(*_: Any) -> list[tuple[str, str]]:
        return [("pro", STORED_PLAN), ("zzz", STORED_PLAN)]

    for name, fake in {
        "upsert_customer": upsert_customer,
        "get_customer": found_customer,
        "list_customers": list_customers,
        "plan_exists": plan_exists,
        "upsert_plan": upsert_plan,
        "get_plan": get_plan,
        "list_plans": list_plans,
    }.items():
        monkeypatch.setattr(customers_repo, name, fake)


CUSTOMER = "/api/v1/customers/{customer_id}"
PLAN = "/api/v1/plans/{plan_id}"


@pytest.mark.parametrize(
    ("path", "method", "handler", "params", "extra", "status"),
    [
        (CUSTOMER, "put", catalog.put_customer, {"customer_id": "c-42"}, {"body": {}}, 201),
        (
            CUSTOMER,
            "put",
            catalog.put_customer,
            {"customer_id": "c-42"},
            {"body": {"name": None, "email": "a@b", "plan_id": "pro"}},
            201,
        ),
        (
            CUSTOMER,
            "put",
            catalog.put_customer,
            {"customer_id": "c-42"},
            {"body": {"plan_id": "gold"}},
            422,
        ),
        (CUSTOMER, "put", catalog.put_customer, {"customer_id": "c-42"}, {"raw": b"nope"}, 400),
        (CUSTOMER, "get", catalog.get_customer, {"customer_id": "c-42"}, {}, 200),
        (CUSTOMER, "get", catalog.get_customer, {"customer_id": "c-43"}, {}, 404),
        (CUSTOMER, "get", catalog.get_customer, {"customer_id": "-"}, {}, 422),
        ("/api/v1/customers", "get", catalog.list_customers, {}, {"query": "limit=1"}, 200),
        ("/api/v1/customers", "get", catalog.list_customers, {}, {"query": "limit=0"}, 422),
        ("/api/v1/customers", "get", catalog.list_customers, {}, {"query": "cursor=%21"}, 422),
        (PLAN, "put", catalog.put_plan, {"plan_id": "pro"}, {"body": CONTRACT_PLAN}, 200),
        (PLAN, "put", catalog.put_plan, {"plan_id": "pro"}, {"body": {"currency": "X"}}, 422),
        (PLAN, "get", catalog.get_plan, {"plan_id": "pro"}, {}, 200),
        (PLAN, "get", catalog.get_plan, {"plan_id": "gold"}, {}, 404),
        ("/api/v1/plans", "get", catalog.list_plans, {}, {"query": "limit=1"}, 200),
    ],
)
@pytest.mark.usefixtures("catalog_repo")
async def test_catalog_answers_are_documented(
    path: str,
    method: str,
    handler: Handler,
    params: dict[str, str],
    extra: dict[str, Any],
    status: int,
) -> None:
    request = make_request(params, services=SimpleNamespace(pool=None), **extra)
    assert (await answer(path, method, handler, request))[0] == status
