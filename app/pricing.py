"""The pricing engine: a pure function from (plan, period quantities) to a bill (CONTRACT §3).

No I/O and no clock: the live bill and any later invoice price the same way. Everything is
``Decimal``; each usage line is computed exactly and rounded once, half up, to the
currency's minor unit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Any, Final

from app.currencies import format_money, round_money
from app.plans import Discount, Model, Plan, Price, Tier, format_decimal

__all__ = ["Bill", "BillLine", "FixedFeeLine", "TierLine", "bill_to_json", "price_bill"]

ZERO: Final = Decimal(0)

# A validated plan keeps every product and sum below 50 digits (see the limits in
# app.plans), so 60 is exact. Inexact is trapped so that, should that ever stop being
# true, a bill fails loudly instead of being rounded silently: the only rounding allowed
# is round_money's. The process-wide context is never relied on or changed.
_EXACT: Final = Context(
    prec=60,
    rounding=ROUND_HALF_UP,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)

# Tier breakdowns are shown for these models; the contract lets the others omit them.
_TIERED_LINES: Final = frozenset({"graduated", "volume"})


@dataclass(frozen=True, slots=True)
class TierLine:
    """Units priced in one tier; ``from_`` is exclusive, ``up_to`` inclusive. Exact amounts."""

    from_: Decimal
    up_to: Decimal | None
    quantity: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class BillLine:
    """One resource type's usage: ``quantity`` is the period quantity (before free units),
    ``amount`` the line rounded to the currency; ``model`` is None when nothing prices it."""

    resource_type: str
    model: Model | None
    quantity: Decimal
    amount: Decimal
    tiers: tuple[TierLine, ...] = ()


@dataclass(frozen=True, slots=True)
class FixedFeeLine:
    description: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Bill:
    """A priced period. ``currency`` is None for a customer without a plan (all amounts 0)."""

    currency: str | None
    lines: tuple[BillLine, ...]
    fixed_fees: tuple[FixedFeeLine, ...]
    subtotal: Decimal
    discount: Decimal
    minimum_topup: Decimal
    total: Decimal


def price_bill(plan: Plan | None, quantities: Mapping[str, Decimal]) -> Bill:
    """Price a customer's period quantities (resource type -> exact Decimal) against ``plan``.

    There is one usage line per resource type priced by the plan (in plan order), then one
    per other resource type with a quantity (sorted, amount 0, model None). Without a plan
    every amount is 0 and the currency is None.

    Raises ``ValueError`` for a quantity that is not a finite ``Decimal``, and
    ``decimal.Inexact`` rather than round silently if a plan that did not come from
    ``parse_plan`` (or an absurd quantity) needs more than the engine's 60 digits.
    """
    for resource_type, quantity in quantities.items():
        if not isinstance(quantity, Decimal) or not quantity.is_finite():
            raise ValueError(f"quantity of {resource_type!r} must be a finite Decimal")
    if plan is None:
        lines = tuple(BillLine(rt, None, quantities[rt], ZERO) for rt in sorted(quantities))
        return Bill(None, lines, (), ZERO, ZERO, ZERO, ZERO)

    currency = plan.currency
    with localcontext(_EXACT):
        priced = [
            _usage_line(price, quantities.get(price.resource_type, ZERO), currency)
            for price in plan.prices
        ]
        unpriced_types = sorted(quantities.keys() - {p.resource_type for p in plan.prices})
        unpriced = [
            BillLine(rt, None, quantities[rt], round_money(ZERO, currency)) for rt in unpriced_types
        ]
        fees = tuple(
            FixedFeeLine(f.description, round_money(f.amount, currency)) for f in plan.fixed_fees
        )
        subtotal = _sum(line.amount for line in priced) + _sum(fee.amount for fee in fees)
        discount = _discount(subtotal, plan.discounts, currency)
        after_discount = subtotal - discount
        topup = max(ZERO, round_money(plan.minimum_commitment, currency) - after_discount)
        return Bill(
            currency=currency,
            lines=(*priced, *unpriced),
            fixed_fees=fees,
            subtotal=round_money(subtotal, currency),
            discount=round_money(discount, currency),
            minimum_topup=round_money(topup, currency),
            total=round_money(after_discount + topup, currency),
        )


def _sum(values: Iterable[Decimal]) -> Decimal:
    return sum(values, ZERO)


def _usage_line(price: Price, quantity: Decimal, currency: str) -> BillLine:
    billable = max(ZERO, quantity - price.free_units)
    tiers: tuple[TierLine, ...] = ()
    if price.model == "per_unit":
        amount = billable * price.unit_price
    elif price.model == "graduated":
        tiers = _graduated(billable, price.tiers)
        amount = _sum(tier.amount for tier in tiers)
    elif price.model == "volume":
        lower, tier = _containing(billable, price.tiers)
        amount = billable * tier.unit_price + tier.flat_fee
        tiers = (TierLine(lower, tier.up_to, billable, tier.unit_price, tier.flat_fee, amount),)
    elif price.model == "stair_step":
        amount = _containing(billable, price.tiers)[1].flat_fee
    else:
        if price.package_size is None or price.package_price is None:
            raise ValueError(f"package price of {price.resource_type!r} lacks its size or price")
        # ceil(B / size) without a division that could be inexact: a started package counts.
        whole, rest = divmod(billable, price.package_size)
        amount = (whole + (1 if rest else 0)) * price.package_price
    return BillLine(
        price.resource_type, price.model, quantity, round_money(amount, currency), tiers
    )


def _graduated(billable: Decimal, tiers: tuple[Tier, ...]) -> tuple[TierLine, ...]:
    """Every tier B reaches into (B > previous up_to), and always the first one."""
    lines: list[TierLine] = []
    lower = ZERO
    for index, tier in enumerate(tiers):
        if index > 0 and billable <= lower:
            break
        top = billable if tier.up_to is None else min(billable, tier.up_to)
        units = max(ZERO, top - lower)
        amount = units * tier.unit_price + tier.flat_fee
        lines.append(TierLine(lower, tier.up_to, units, tier.unit_price, tier.flat_fee, amount))
        if tier.up_to is None:
            break
        lower = tier.up_to
    return tuple(lines)


def _containing(billable: Decimal, tiers: tuple[Tier, ...]) -> tuple[Decimal, Tier]:
    """The one tier holding B (B <= up_to; 0 is in the first), with its exclusive lower bound."""
    lower = ZERO
    for tier in tiers:
        if tier.up_to is None or billable <= tier.up_to:
            return lower, tier
        lower = tier.up_to
    raise ValueError("tiers must end with an unbounded tier (up_to null)")


def _discount(subtotal: Decimal, discounts: tuple[Discount, ...], currency: str) -> Decimal:
    """Apply discounts in order, each on what the ones before left; never below zero."""
    remaining = subtotal
    for discount in discounts:
        if discount.percent is not None:
            cut = round_money(remaining * discount.percent / 100, currency)
        else:
            cut = discount.amount or ZERO
        remaining -= min(cut, remaining)
    return subtotal - remaining


def bill_to_json(bill: Bill) -> dict[str, Any]:
    """Render ``bill`` in the live bill's shape (CONTRACT §2 "Live bill"), minus what the
    caller adds (``customer_id``, ``plan_id``, ``period``, ``as_of``).

    Money is a decimal string with the currency's minor-unit digits ("157.50", JPY "1200"),
    or "0" without a plan; tier prices, tier amounts and quantities are exact and trimmed.
    ``estimated_bill`` is a ``Decimal`` equal to ``total`` (trimmed: 177.5) so that an exact
    encoder such as ``app.jsonio.dumps`` writes it as a JSON number, digit for digit.
    """
    code = bill.currency
    money: Callable[[Decimal], str] = (
        format_decimal if code is None else (lambda amount: format_money(amount, code))
    )
    lines: list[dict[str, Any]] = [_usage_to_json(line, money) for line in bill.lines]
    lines += [
        {"type": "fixed_fee", "description": fee.description, "amount": money(fee.amount)}
        for fee in bill.fixed_fees
    ]
    return {
        "currency": code,
        "estimated_bill": Decimal(format_decimal(bill.total)),
        "lines": lines,
        "subtotal": money(bill.subtotal),
        "discount": money(bill.discount),
        "minimum_topup": money(bill.minimum_topup),
        "total": money(bill.total),
    }


def _usage_to_json(line: BillLine, money: Callable[[Decimal], str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "usage",
        "resource_type": line.resource_type,
        "model": line.model,
        "quantity": format_decimal(line.quantity),
        "amount": money(line.amount),
    }
    if line.model in _TIERED_LINES:
        out["tiers"] = [
            {
                "from": format_decimal(tier.from_),
                "up_to": None if tier.up_to is None else format_decimal(tier.up_to),
                "quantity": format_decimal(tier.quantity),
                "unit_price": format_decimal(tier.unit_price),
                "flat_fee": format_decimal(tier.flat_fee),
                "amount": format_decimal(tier.amount),
            }
            for tier in line.tiers
        ]
    return out
