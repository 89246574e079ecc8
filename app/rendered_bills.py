"""A bill's JSON, kept per (stored plan, quantities) and bounded in bytes.

Pricing is a pure function of the plan and the period quantities (app/pricing.py), and so
is its rendering: a bill read again with the same usage (a dashboard polling a customer,
or bills of one customer sharing a read) need not be priced and rendered again. What is
kept is keyed by the plan's stored document itself, so an updated plan is priced afresh,
and by the exact quantities, so new usage is too. Reads are never kept: only this pure
step's output.

Memory is bounded in bytes, not entries: a plan may be up to 2 MB, so a count alone could
hold gigabytes. Kept bills and parsed plans have a budget each; an entry too big for its
share of a budget is made and not kept.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic, TypeVar

from app import jsonio
from app.plans import Plan, parse_plan
from app.pricing import bill_to_json, price_bill

Quantities = tuple[tuple[str, Decimal], ...]
BillKey = tuple[str | None, str | None, Quantities]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Per process. A typical kept bill (a plan of a few prices, a bill of a few lines) is 3-6
# kB, so this keeps a few thousand; one may take at most a 64th of it.
MAX_BYTES = 16 * 1024 * 1024
# Parsed plans, per process: two of the biggest, thousands of the usual ones; one may take
# at most half of it, a document of 4 MB. A plan's request is at most 2 MiB and its stored
# document (plan_to_json's, as jsonb text: a space after each ',' and ':') usually about
# 1.15 times that; up to about 3.5 times for thousands of minimal prices or tiers, whose
# defaults are written out ("free_units": "0", "flat_fee": "0": a 2 MiB request of them
# was stored as 7.2 MB). Such a plan, past 4 MB, is parsed again for each bill it prices.
PLAN_BYTES = 64 * 1024 * 1024
# A parsed plan's objects take about 6.3 times its document's size (measured on a 254 kB
# plan): 8 is the estimate kept.
_PLAN_PER_BYTE = 8
# What a kept quantity costs besides its name, roughly (tuple and Decimal objects).
_PER_QUANTITY = 200


class ByteBoundedLRU(Generic[K, V]):
    """Least recently used entries within ``max_bytes`` (sizes as the caller states them);
    an entry bigger than ``max_entry`` is not kept. For one thread (an event loop)."""

    def __init__(self, max_bytes: int, max_entry: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.bytes = 0
        self._kept: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: K) -> V | None:
        found = self._kept.get(key)
        if found is None:
            return None
        self._kept.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V, size: int) -> None:
        if size > self.max_entry or key in self._kept:
            return
        self._kept[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._kept.popitem(last=False)
            self.bytes -= dropped


@dataclass(frozen=True, slots=True)
class RenderedBill:
    """A priced bill: the members the contract puts first, then the rest, rendered.

    ``head`` is the ``currency``, ``estimated_bill`` and ``plan_id`` members and ``rest``
    the remaining ones with the object's closing brace: a caller writes ``{``, its own
    members, ``head``, more of its own, then ``rest``, commas between, as one object.
    """

    currency: str | None
    estimated_bill: Decimal
    plan_id: str | None
    head: bytes
    rest: bytes


def render(plan: Plan | None, quantities: Quantities) -> RenderedBill:
    """Price ``quantities`` against ``plan`` (None: no plan, every amount 0) and render."""
    bill = bill_to_json(price_bill(plan, dict(quantities)))
    currency: str | None = bill.pop("currency")
    estimated: Decimal = bill.pop("estimated_bill")
    plan_id = None if plan is None else plan.plan_id
    head = {"currency": currency, "estimated_bill": estimated, "plan_id": plan_id}
    # Rendered objects less their braces (the rest keeps its closing one): members to write
    # inside another object.
    return RenderedBill(
        currency, estimated, plan_id, jsonio.dumps(head)[1:-1], jsonio.dumps(bill)[1:]
    )


class RenderedBills:
    """Bills rendered once per (plan id, stored plan document, quantities), and plans
    parsed once per (plan id, document), each within its own byte budget."""

    def __init__(
        self,
        max_bytes: int = MAX_BYTES,
        max_entry: int | None = None,
        plan_bytes: int = PLAN_BYTES,
    ) -> None:
        bill_entry = max_bytes // 64 if max_entry is None else max_entry
        self.bills: ByteBoundedLRU[BillKey, RenderedBill] = ByteBoundedLRU(max_bytes, bill_entry)
        self.plans: ByteBoundedLRU[tuple[str, str], Plan] = ByteBoundedLRU(
            plan_bytes, plan_bytes // 2
        )

    def get(
        self, plan_id: str | None, plan_body: str | None, quantities: Quantities
    ) -> RenderedBill:
        """The bill of ``quantities`` under the stored plan (none without id and document)."""
        key = (plan_id, plan_body, quantities)
        found = self.bills.get(key)
        if found is not None:
            return found
        plan = self._plan(plan_id, plan_body) if plan_id and plan_body else None
        rendered = render(plan, quantities)
        size = (
            sys.getsizeof(plan_id)
            + sys.getsizeof(plan_body)
            + len(rendered.head)
            + len(rendered.rest)
            + sum(sys.getsizeof(name) + _PER_QUANTITY for name, _ in quantities)
        )
        self.bills.put(key, rendered, size)
        return rendered

    def _plan(self, plan_id: str, body: str) -> Plan:
        # Keyed by the stored document itself, so an updated plan is parsed again; plans
        # are frozen dataclasses, safe to share between bills.
        found = self.plans.get((plan_id, body))
        if found is None:
            found = parse_plan(plan_id, jsonio.loads(body))
            self.plans.put((plan_id, body), found, _PLAN_PER_BYTE * sys.getsizeof(body))
        return found
