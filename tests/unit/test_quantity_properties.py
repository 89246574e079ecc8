"""Properties, over thousands of random cases: exact quantities, exact sums, injective keys.

No server: the ingest property runs the real ingest script on fakeredis (Lua 5.1).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import fakeredis
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app import jsonio
from app.hotpath.events import EventError, parse_event
from app.hotpath.ingest import IdempotencyConfig, Outcome, apply_events
from app.hotpath.keys import SHARDS, TenantKeys, as_text, meter_field, split_field
from app.ids import is_valid_id
from app.quantities import QuantityError, format_quantity, from_micro, to_micro
from app.scripts import Scripts

pytestmark = pytest.mark.unit

MICRO = 10**6
MAX_MICRO = 10**9 * MICRO

# -- quantities --------------------------------------------------------------------------

FORMS = ("string", "json", "json-exponent", "decimal-normalized", "int")


def decimals_needed(micro: int) -> int:
    """The fewest digits after the point that write ``micro`` micro-units exactly."""
    frac = micro % MICRO
    digits = 6
    while digits and frac % 10 == 0:
        frac //= 10
        digits -= 1
    return digits


def plain_text(micro: int, digits: int) -> str:
    """``micro`` micro-units written with ``digits`` digits after the point (≥ the needed)."""
    units, frac = divmod(micro, MICRO)
    return f"{units}.{frac:06d}"[: len(str(units)) + 1 + digits] if digits else str(units)


def render(micro: int, form: str, digits: int) -> object:
    """The quantity as a client could send it: a string, a JSON number, or an int."""
    text = plain_text(micro, digits)
    if form == "string":
        return text
    if form == "json":  # what the API's JSON decoder makes of the number
        return jsonio.loads(text)
    if form == "json-exponent":
        return jsonio.loads(f"{micro}e-6")
    if form == "decimal-normalized":  # e.g. Decimal("1.5E+3"): a positive exponent
        return Decimal(text).normalize()
    assert micro % MICRO == 0
    return micro // MICRO


@st.composite
def quantities(draw: st.DrawFn) -> tuple[int, object]:
    """(micro-units, the same quantity in one of the forms a client may use)."""
    micro = draw(
        st.one_of(
            st.integers(1, MAX_MICRO),
            st.integers(1, 10**9).map(lambda units: units * MICRO),
            st.integers(1, 10**6),  # below one unit
            st.sampled_from([1, MAX_MICRO, MAX_MICRO - 1, 10**9, 10**9 + 1]),
        )
    )
    forms = [f for f in FORMS if f != "int" or micro % MICRO == 0]
    form = draw(st.sampled_from(forms))
    digits = draw(st.integers(decimals_needed(micro), 6))
    return micro, render(micro, form, digits)


@settings(max_examples=2000, deadline=None)
@given(quantities())
def test_every_form_of_a_quantity_parses_to_exact_micro_units(case: tuple[int, object]) -> None:
    micro, value = case
    assert to_micro(value) == micro
    assert from_micro(to_micro(value)) == Decimal(str(value))
    shown = format_quantity(from_micro(micro))
    assert re.fullmatch(r"(0|[1-9][0-9]*)(\.[0-9]*[1-9])?", shown), shown
    assert shown == plain_text(micro, decimals_needed(micro))
    assert to_micro(shown) == micro


@settings(max_examples=1500, deadline=None)
@given(
    st.decimals(
        min_value=Decimal("0.000001"),
        max_value=Decimal(10**9),
        places=6,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_a_decimal_with_six_places_is_q_times_ten_to_the_six(q: Decimal) -> None:
    micro = to_micro(q)
    assert micro == q * 10**6
    assert isinstance(micro, int)
    assert from_micro(micro) == q
    assert Decimal(format_quantity(q)) == q
    assert to_micro(format_quantity(q)) == micro


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        # a seventh decimal
        st.integers(1, MAX_MICRO * 10).filter(lambda n: n % 10).map(lambda n: f"{n}e-7"),
        # past 10^9
        st.integers(MAX_MICRO + 1, MAX_MICRO * 1000).map(lambda n: f"{n}e-6"),
        # zero and below
        st.integers(-MAX_MICRO, 0).map(lambda n: f"{n}e-6"),
    ),
    st.sampled_from(["json", "string"]),
)
def test_out_of_range_and_overprecise_quantities_are_refused(text: str, form: str) -> None:
    number: Decimal = Decimal(text)
    value: object = jsonio.loads(text) if form == "json" else format(number, "f")
    with pytest.raises(QuantityError):
        to_micro(value)


# -- exact sums through the ingest script ----------------------------------------------------

CUSTOMERS = ("c1", "c:2", "c:2:x", "ops@acme.io")
RESOURCES = ("api_call", "gb", "a:b")
IDEMPOTENCY_KEYS = ("k1", "k2", "k3", "k4", "k5")
CONFIG = IdempotencyConfig(ttl=86_400, fanout=4)  # few slots: keys share window hashes
OFFSETS = (UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30)))


@dataclass(frozen=True)
class Spec:
    """One event as the test knows it, and how it is written on the wire."""

    customer: str
    resource: str
    micro: int
    age_s: int  # seconds before now: within the last day
    key: str | None
    form: str
    digits: int
    zone: int

    def same_event(self, other: Spec) -> bool:
        return (self.customer, self.resource, self.micro, self.age_s) == (
            other.customer,
            other.resource,
            other.micro,
            other.age_s,
        )

    def body(self, now_s: int) -> dict[str, object]:
        moment = datetime.fromtimestamp(now_s - self.age_s, tz=UTC).astimezone(OFFSETS[self.zone])
        body: dict[str, object] = {
            "customer_id": self.customer,
            "resource_type": self.resource,
            "quantity": render(self.micro, self.form, self.digits),
            "timestamp": moment.isoformat(),
        }
        if self.key is not None:
            body["idempotency_key"] = self.key
        return body


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    micro = draw(st.integers(1, 5 * MICRO) | st.integers(1, MAX_MICRO))
    forms = [f for f in FORMS if f != "int" or micro % MICRO == 0]
    return Spec(
        customer=draw(st.sampled_from(CUSTOMERS)),
        resource=draw(st.sampled_from(RESOURCES)),
        micro=micro,
        age_s=draw(st.integers(0, 86_399)),
        key=draw(st.none() | st.sampled_from(IDEMPOTENCY_KEYS)),
        form=draw(st.sampled_from(forms)),
        digits=draw(st.integers(decimals_needed(micro), 6)),
        zone=draw(st.integers(0, len(OFFSETS) - 1)),
    )


@st.composite
def streams(draw: st.DrawFn) -> list[Spec]:
    """Events, some of them retries of earlier ones written differently (same event)."""
    stream: list[Spec] = []
    for _ in range(draw(st.integers(1, 40))):
        keyed = [s for s in stream if s.key is not None]
        if keyed and draw(st.integers(0, 3)) == 0:
            earlier = draw(st.sampled_from(keyed))
            forms = [f for f in FORMS if f != "int" or earlier.micro % MICRO == 0]
            stream.append(
                replace(
                    earlier,
                    form=draw(st.sampled_from(forms)),
                    digits=draw(st.integers(decimals_needed(earlier.micro), 6)),
                    zone=draw(st.integers(0, len(OFFSETS) - 1)),
                )
            )
        else:
            stream.append(draw(specs()))
    return stream


def model(stream: list[Spec], now_s: int) -> tuple[list[Outcome], Counter[tuple[str, str, int]]]:
    """What the contract says: outcomes, and micro-units per (customer, resource, hour)."""
    first: dict[str, Spec] = {}
    outcomes: list[Outcome] = []
    totals: Counter[tuple[str, str, int]] = Counter()
    for spec in stream:
        if spec.key is not None and spec.key in first:
            outcomes.append(
                Outcome.DUPLICATE if first[spec.key].same_event(spec) else Outcome.CONFLICT
            )
            continue
        if spec.key is not None:
            first[spec.key] = spec
        outcomes.append(Outcome.ACCEPTED)
        totals[(spec.customer, spec.resource, (now_s - spec.age_s) // 3600)] += spec.micro
    return outcomes, totals


async def ingest_in_batches(
    stream: list[Spec], cuts: list[int], now_s: int
) -> tuple[list[Outcome], dict[str, dict[str, int]]]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    scripts = Scripts.register(client, shebang=False)
    now_ns = now_s * 1_000_000_000
    events = [parse_event(spec.body(now_s), now_ns=now_ns) for spec in stream]
    bounds = sorted({0, len(events), *(c for c in cuts if 0 < c < len(events))})
    outcomes: list[Outcome] = []
    for start, end in itertools.pairwise(bounds):
        outcomes += await apply_events(scripts, "t:1", events[start:end], CONFIG, now_ns)
    keys = TenantKeys("t:1")
    stored: dict[str, dict[str, int]] = {}
    for customer in CUSTOMERS:
        raw = await client.hgetall(keys.hot(customer))
        stored[customer] = {as_text(k): int(v) for k, v in raw.items()}
    await client.aclose()
    return outcomes, stored


@settings(max_examples=60, deadline=None)
@given(streams(), st.lists(st.integers(0, 40), max_size=8))
def test_random_batches_sum_exactly_and_count_each_keyed_event_once(
    stream: list[Spec], cuts: list[int]
) -> None:
    now_s = time.time_ns() // 1_000_000_000
    outcomes, stored = asyncio.run(ingest_in_batches(stream, cuts, now_s))
    expected_outcomes, totals = model(stream, now_s)
    assert outcomes == expected_outcomes
    expected: dict[str, dict[str, int]] = {c: {} for c in CUSTOMERS}
    for (customer, resource, hour), micro in totals.items():
        expected[customer][meter_field(resource, hour)] = micro
    assert stored == expected


# -- key layout -------------------------------------------------------------------------

ALNUM = string.ascii_letters + string.digits
# Weighted towards ':' and a few letters, so near-collisions ("a:b" + "c" / "a" + "b:c")
# come up all the time.
_REST = st.sampled_from(list(":" * 10 + "ab" * 4 + "._@+-" + ALNUM))
identifiers = st.one_of(
    st.builds(lambda f, r: f + r, st.sampled_from("ab1" + ALNUM), st.text(_REST, max_size=8)),
    # up to the longest identifier allowed (128 characters), built cheaply by repetition
    st.builds(
        lambda f, r: (f + r * 128)[:128],
        st.sampled_from(ALNUM),
        st.text(_REST, min_size=1, max_size=6),
    ),
)
hours = st.integers(490_000, 490_002) | st.integers(0, 10**7)
tuples = st.tuples(identifiers, identifiers, identifiers, hours)


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: between the first '{' and the next '}'."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start + 1)]


@settings(max_examples=400, deadline=None)
@given(st.lists(tuples, min_size=2, max_size=8, unique=True))
@example([("a:b", "c", "r", 1), ("a", "b:c", "r", 1)])
@example([("a", "b:hot:c", "r", 1), ("a", "b", "r", 1)])
@example([("t", "c", "r:1", 2), ("t", "c", "r", 12), ("t", "c:r", "1", 2)])
def test_distinct_meters_never_share_a_key_and_field(
    meters: list[tuple[str, str, str, int]],
) -> None:
    assert all(is_valid_id(part) for meter in meters for part in meter[:3])
    hot = {(TenantKeys(t).hot(c), meter_field(r, h)) for t, c, r, h in meters}
    pending = {(TenantKeys(t).pending(c), meter_field(r, h)) for t, c, r, h in meters}
    assert len(hot) == len(pending) == len(set(meters))
    for tenant, customer, resource, hour in meters:
        assert split_field(meter_field(resource, hour)) == (resource, hour)
        assert hash_tag(TenantKeys(tenant).hot(customer)) == tenant


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(identifiers, identifiers), min_size=1, max_size=4, unique=True))
def test_no_two_kinds_of_key_collide_and_all_of_a_tenant_share_its_tag(
    pairs: list[tuple[str, str]],
) -> None:
    names: dict[str, tuple[object, ...]] = {}
    for tenant, customer in pairs:
        keys = TenantKeys(tenant)
        built: dict[tuple[object, ...], str] = {
            ("hot", tenant, customer): keys.hot(customer),
            ("pending", tenant, customer): keys.pending(customer),
        }
        for shard in range(SHARDS):
            for kind in ("dirty", "pending_customers", "meta", "seq", "first", "lease"):
                built[(kind, tenant, shard)] = getattr(keys, kind)(shard)
        for window, slot in ((490, 0), (491, 3)):
            built[("idempotency", tenant, window, slot)] = keys.idempotency(window, slot)
        for month in (682, 683, 6820):
            built[("totals", tenant, customer, month)] = keys.totals(customer, month)
        for what, name in built.items():
            assert hash_tag(name) == tenant
            assert names.setdefault(name, what) == what, (name, names[name], what)


def test_metadata_too_deep_to_write_again_is_refused_not_a_crash() -> None:
    # json.loads takes metadata as deep as the stack allows; writing it again from a
    # deeper stack (a request's) runs out of recursion: that must be the client's 422,
    # never a 500.
    def event(depth: int) -> str:
        nested = '{"a":' * depth + "{}" + "}" * depth
        return f'{{"customer_id":"c","resource_type":"r","quantity":1,"metadata":{nested}}}'

    def deepest_parsed() -> object:
        for depth in range(1000, 0, -5):
            try:
                return jsonio.loads(event(depth))
            except jsonio.JSONDecodeError:
                continue
        raise AssertionError("not even shallow metadata parsed")

    body = deepest_parsed()

    def from_a_deeper_stack(frames: int) -> object:
        return from_a_deeper_stack(frames - 1) if frames else parse_event(body)

    with pytest.raises(EventError) as refused:
        from_a_deeper_stack(60)
    assert refused.value.field == "metadata"
    assert refused.value.message.endswith("is nested too deeply")
