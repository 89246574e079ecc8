"""A bill's JSON, kept per (stored plan, quantities) and bounded in bytes.

Pricing is a pure function of the plan and the period quantities (app/pricing.py), and so
is its rendering: a bill read again with the same usage (a dashboard polling a customer,
or bills of one customer sharing a read) need not be priced and rendered again. What is
kept is keyed by the plan's stored document itself, so an updated plan is priced afresh,
and by the exact quantities, so new usage is too. Reads are never kept: only this pure
step's output.

Memory is bounded in bytes, not entries: a plan may be up to 2 MB, so a count alone could
hold gigabytes. An entry too big for a share of the budget is rendered and not kept.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal

from app import jsonio
from app.plans import Plan, parse_plan
from app.pricing import bill_to_json, price_bill

Quantities = tuple[tuple[str, Decimal], ...]
Key = tuple[str | None, str | None, Quantities]

# Per process. A typical entry (a plan of a few prices, a bill of a few lines) is 2-5 kB,
# so this keeps a few thousand bills; one entry may take at most a 64th of it.
MAX_BYTES = 16 * 1024 * 1024
# What a kept quantity costs beyond its text, roughly (tuple, str and Decimal objects).
_PER_QUANTITY = 200


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


def _parse(plan_id: str, body: str) -> Plan:
    return parse_plan(plan_id, jsonio.loads(body))


# Keyed by the stored document itself, so an updated plan is parsed again; plans are frozen
# dataclasses, safe to share between bills. Only plans up to _PLAN_KEPT_BYTES are kept
# (256 of those is at most 64 MB of text); a bigger one is parsed for each bill priced.
_parsed = functools.lru_cache(maxsize=256)(_parse)
_PLAN_KEPT_BYTES = 256 * 1024


def _plan(plan_id: str, body: str) -> Plan:
    return (_parsed if len(body) <= _PLAN_KEPT_BYTES else _parse)(plan_id, body)


def render(plan_id: str | None, plan_body: str | None, quantities: Quantities) -> RenderedBill:
    """Price ``quantities`` against the stored plan (none without an id and a body)."""
    plan = _plan(plan_id, plan_body) if plan_id and plan_body else None
    bill = bill_to_json(price_bill(plan, dict(quantities)))
    currency: str | None = bill.pop("currency")
    estimated: Decimal = bill.pop("estimated_bill")
    priced_plan = plan_id if plan is not None else None
    head = {"currency": currency, "estimated_bill": estimated, "plan_id": priced_plan}
    # Rendered objects less their braces (the rest keeps its closing one): members to write
    # inside another object.
    return RenderedBill(
        currency, estimated, priced_plan, jsonio.dumps(head)[1:-1], jsonio.dumps(bill)[1:]
    )


class RenderedBills:
    """:func:`render`, keeping the most recently used renderings within ``max_bytes``; one
    bigger than ``max_entry`` (a 64th of the budget unless given) is not kept."""

    def __init__(self, max_bytes: int = MAX_BYTES, max_entry: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_bytes // 64 if max_entry is None else max_entry
        self.bytes = 0
        self._kept: OrderedDict[Key, tuple[RenderedBill, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(
        self, plan_id: str | None, plan_body: str | None, quantities: Quantities
    ) -> RenderedBill:
        key = (plan_id, plan_body, quantities)
        found = self._kept.get(key)
        if found is not None:
            self._kept.move_to_end(key)
            return found[0]
        rendered = render(plan_id, plan_body, quantities)
        size = (
            len(plan_id or "")
            + len(plan_body or "")
            + len(rendered.head)
            + len(rendered.rest)
            + sum(len(name) + _PER_QUANTITY for name, _ in quantities)
        )
        if size <= self.max_entry:
            self._kept[key] = (rendered, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._kept.popitem(last=False)
                self.bytes -= dropped
        return rendered
