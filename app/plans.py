"""Pricing plans: their schema, their validation from a decoded JSON body, and their rendering.

Every number in a plan is an exact ``Decimal``. The body arrives from a JSON decoder run
with ``parse_float=Decimal``, so a number is an ``int`` or a ``Decimal``; decimal strings
("6.5") are accepted too. Binary floats, booleans, NaN and Infinity are refused.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, TypeGuard, get_args

from app.currencies import UnknownCurrencyError, format_money, minor_units
from app.ids import id_problem
from app.text import text_problem

__all__ = [
    "MAX_PERCENT",
    "MAX_STRING_NUMBER",
    "MODELS",
    "MONEY_DIGITS",
    "PERCENT_PLACES",
    "PRICE_PLACES",
    "QUANTITY_DIGITS",
    "QUANTITY_PLACES",
    "Discount",
    "FixedFee",
    "Model",
    "Plan",
    "PlanValidationError",
    "Price",
    "Tier",
    "format_decimal",
    "parse_plan",
    "plan_to_json",
]

Model = Literal["per_unit", "graduated", "volume", "package", "stair_step"]
MODELS: Final[tuple[Model, ...]] = get_args(Model)

ZERO: Final = Decimal(0)

# A decimal string: no sign, exponent or whitespace, no "1_000" (which Decimal() would take).
_DECIMAL_STRING = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MAX_STRING_NUMBER: Final = 64

# Limits keep every product the pricing engine forms within its 60-digit context:
# a quantity (< 10^15, 6 places) times a price (< 10^12, 12 places) is at most 45 digits.
# The OpenAPI schema states them too (app.openapi).
QUANTITY_PLACES: Final = 6
QUANTITY_DIGITS: Final = 15
PRICE_PLACES: Final = 12
MONEY_DIGITS: Final = 12
PERCENT_PLACES: Final = 6
MAX_PERCENT: Final = 100
_MAX_TEXT: Final = 256
_MAX_PRICES: Final = 1000
_MAX_TIERS: Final = 250
_MAX_ADJUSTMENTS: Final = 100  # fixed fees, and discounts

_PLAN_FIELDS: Final = frozenset(
    {"plan_id", "name", "currency", "prices", "fixed_fees", "discounts", "minimum_commitment"}
)
_PRICE_COMMON: Final = frozenset({"resource_type", "model", "free_units"})
_MODEL_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "per_unit": frozenset({"unit_price"}),
    "graduated": frozenset({"tiers"}),
    "volume": frozenset({"tiers"}),
    "stair_step": frozenset({"tiers"}),
    "package": frozenset({"package_size", "package_price"}),
}
_ALL_MODEL_FIELDS: Final = frozenset().union(*_MODEL_FIELDS.values())
_TIER_FIELDS: Final = frozenset({"up_to", "unit_price", "flat_fee"})


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier; ``up_to`` is inclusive and ``None`` on the last tier (no bound)."""

    up_to: Decimal | None
    unit_price: Decimal = ZERO
    flat_fee: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Price:
    """How one resource type is priced. Fields a model does not use keep their defaults."""

    resource_type: str
    model: Model
    unit_price: Decimal = ZERO
    free_units: Decimal = ZERO
    package_size: Decimal | None = None
    package_price: Decimal | None = None
    tiers: tuple[Tier, ...] = ()


@dataclass(frozen=True, slots=True)
class FixedFee:
    description: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Discount:
    """Exactly one of ``percent`` (0..100) and ``amount`` is set."""

    description: str
    percent: Decimal | None = None
    amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    name: str
    currency: str
    prices: tuple[Price, ...]
    fixed_fees: tuple[FixedFee, ...] = ()
    discounts: tuple[Discount, ...] = ()
    minimum_commitment: Decimal = ZERO


class PlanValidationError(ValueError):
    """A plan body was refused; ``details`` names each bad field (all of them, not the first)."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__(f"invalid plan ({len(details)} problem(s))")
        self.details = details


@functools.lru_cache(maxsize=4096, typed=True)
def format_decimal(value: Decimal) -> str:
    """Render ``value`` exactly and positionally, trailing zeros trimmed ("6.5", "35", "0.1").

    The text depends on the value alone (1.50, 1.5 and 15E-1 all give "1.5"), so it is
    cached by value: a bill writes some twenty of them, most of them its plan's prices.
    (``typed``: an int or float equal to a Decimal would write another text.)
    """
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _is_model(value: object) -> TypeGuard[Model]:
    return value in MODELS


def _places(value: Decimal) -> int:
    """Digits after the point that carry value: "20.000" has 0, "1.50" has 1."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # only finite values get here
    trailing = 0
    for digit in reversed(digits):
        if digit:
            break
        trailing += 1
    return max(0, -exponent - trailing)


class _Parser:
    """Walks a plan body, collecting every problem as ``{"field", "message"}``."""

    def __init__(self) -> None:
        self.details: list[dict[str, str]] = []

    def error(self, field: str, message: str) -> None:
        self.details.append({"field": field or "body", "message": message})

    def obj(
        self, value: object, path: str, allowed: frozenset[str], required: tuple[str, ...] = ()
    ) -> Mapping[str, object] | None:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            self.error(path, "must be a JSON object")
            return None
        for key in value:
            if key not in allowed:
                self.error(_join(path, key), "unknown field")
        for key in required:
            if key not in value:
                self.error(_join(path, key), "is required")
        return value

    def array(self, value: object, path: str, limit: int) -> list[object]:
        if not isinstance(value, list):
            self.error(path, "must be a JSON array")
            return []
        if len(value) > limit:
            self.error(path, f"must have at most {limit} entries")
            return []
        return value

    def text(self, value: object, path: str) -> str:
        if not isinstance(value, str) or not 1 <= len(value) <= _MAX_TEXT:
            self.error(path, f"must be a string of 1 to {_MAX_TEXT} characters")
            return ""
        problem = text_problem(value)
        if problem:
            self.error(path, problem)
            return ""
        return value

    def identifier(self, value: object, path: str) -> str:
        problem = id_problem(value)
        if problem is not None:
            self.error(path, problem)
            return ""
        assert isinstance(value, str)
        return value

    def number(
        self,
        value: object,
        path: str,
        *,
        places: int | None,
        digits: int,
        positive: bool = False,
        maximum: Decimal | None = None,
    ) -> Decimal | None:
        """An exact, finite, bounded, non-negative decimal (``places=None``: scale unchecked)."""
        number = self._decimal(value, path)
        if number is None:
            return None
        if number.is_zero():
            if positive:
                self.error(path, "must be greater than 0")
                return None
            return ZERO  # also folds "-0" and "0E+99" into one plain zero
        problem = None
        if number < 0:
            problem = "must not be negative"
        elif maximum is not None and number > maximum:
            problem = f"must be at most {format_decimal(maximum)}"
        elif number.adjusted() >= digits:
            problem = f"is too large (at most {digits} digits before the decimal point)"
        elif places is not None and _places(number) > places:
            problem = f"must have at most {places} digits after the decimal point"
        if problem is not None:
            self.error(path, problem)
            return None
        return number

    def _decimal(self, value: object, path: str) -> Decimal | None:
        if isinstance(value, bool):
            self.error(path, "must be a number, not a boolean")
            return None
        if isinstance(value, int):
            return Decimal(value)
        if isinstance(value, float):
            # Only NaN/Infinity constants or a decoder without parse_float=Decimal get here.
            self.error(
                path, "must be an exact decimal (JSON number or decimal string), not a float"
            )
            return None
        if isinstance(value, str):
            unsigned = value.removeprefix("-")
            if len(value) > MAX_STRING_NUMBER or _DECIMAL_STRING.fullmatch(unsigned) is None:
                self.error(path, 'must be a decimal string such as "6.5"')
                return None
            if unsigned != value:
                # Also "-0": the schema's pattern has no sign, and one rule is simpler to state.
                self.error(path, "must not be negative")
                return None
            return Decimal(value)
        if isinstance(value, Decimal):
            if not value.is_finite():
                self.error(path, "must be a finite number")
                return None
            return value
        self.error(path, "must be a number or a decimal string")
        return None

    def quantity(self, value: object, path: str, *, positive: bool = False) -> Decimal | None:
        return self.number(
            value, path, places=QUANTITY_PLACES, digits=QUANTITY_DIGITS, positive=positive
        )

    def price(self, value: object, path: str) -> Decimal | None:
        return self.number(value, path, places=PRICE_PLACES, digits=MONEY_DIGITS)

    def money(self, value: object, path: str, currency_places: int | None) -> Decimal | None:
        return self.number(value, path, places=currency_places, digits=MONEY_DIGITS)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_plan(plan_id: str, body: object) -> Plan:
    """Validate a decoded plan body (CONTRACT §3) and return the ``Plan`` it describes.

    Raises ``PlanValidationError`` listing every problem found, each with the path of the
    field ("prices[0].tiers[1].up_to") and a message.
    """
    p = _Parser()
    p.identifier(plan_id, "plan_id")
    body_obj = p.obj(body, "", _PLAN_FIELDS, required=("currency", "prices"))
    if body_obj is None:
        raise PlanValidationError(p.details)
    # plan_to_json() includes plan_id, so a GET body can be PUT back unchanged.
    if "plan_id" in body_obj and body_obj["plan_id"] != plan_id:
        p.error("plan_id", "does not match the plan id in the path")

    name = p.text(body_obj["name"], "name") if "name" in body_obj else plan_id
    currency, currency_places = _currency(p, body_obj)
    prices = _prices(p, body_obj.get("prices", []))
    fixed_fees = tuple(
        _fixed_fee(p, fee, f"fixed_fees[{i}]", currency_places)
        for i, fee in enumerate(
            p.array(body_obj.get("fixed_fees", []), "fixed_fees", _MAX_ADJUSTMENTS)
        )
    )
    discounts = tuple(
        _discount(p, item, f"discounts[{i}]", currency_places)
        for i, item in enumerate(
            p.array(body_obj.get("discounts", []), "discounts", _MAX_ADJUSTMENTS)
        )
    )
    minimum = p.money(body_obj.get("minimum_commitment", 0), "minimum_commitment", currency_places)

    if p.details:
        raise PlanValidationError(p.details)
    return Plan(
        plan_id=plan_id,
        name=name,
        currency=currency,
        prices=prices,
        fixed_fees=fixed_fees,
        discounts=discounts,
        minimum_commitment=minimum or ZERO,
    )


def _currency(p: _Parser, body: Mapping[str, object]) -> tuple[str, int | None]:
    if "currency" not in body:
        return "", None  # already reported as required
    value = body["currency"]
    if not isinstance(value, str):
        p.error("currency", 'must be an ISO 4217 code such as "USD"')
        return "", None
    try:
        return value, minor_units(value)
    except UnknownCurrencyError:
        p.error("currency", f"unknown currency {value!r} (ISO 4217 upper-case code expected)")
        return "", None


def _prices(p: _Parser, value: object) -> tuple[Price, ...]:
    prices: list[Price] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(p.array(value, "prices", _MAX_PRICES)):
        path = f"prices[{i}]"
        price = _price(p, item, path)
        if price is None:
            continue
        if price.resource_type in seen:
            p.error(
                f"{path}.resource_type",
                f"{price.resource_type!r} is already priced by prices[{seen[price.resource_type]}]",
            )
            continue
        seen[price.resource_type] = i
        prices.append(price)
    return tuple(prices)


def _price(p: _Parser, value: object, path: str) -> Price | None:
    allowed = _PRICE_COMMON | _ALL_MODEL_FIELDS
    obj = p.obj(value, path, allowed, required=("resource_type", "model"))
    if obj is None:
        return None
    errors_before = len(p.details)
    resource_type = ""
    if "resource_type" in obj:
        resource_type = p.identifier(obj["resource_type"], f"{path}.resource_type")
    free_units = p.quantity(obj.get("free_units", 0), f"{path}.free_units")
    model = obj.get("model")
    if not _is_model(model):
        if "model" in obj:
            p.error(f"{path}.model", f"must be one of {', '.join(MODELS)}")
        return None
    used = _MODEL_FIELDS[model]
    for key in sorted((_ALL_MODEL_FIELDS - used) & obj.keys()):
        # Refused rather than ignored: a price the model would not charge is a plan bug.
        p.error(_join(path, key), f"is not used by the {model} model")
    for key in sorted(used - obj.keys()):
        p.error(_join(path, key), f"is required by the {model} model")

    unit_price: Decimal | None = ZERO
    package_size: Decimal | None = None
    package_price: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    if model == "per_unit" and "unit_price" in obj:
        unit_price = p.price(obj["unit_price"], f"{path}.unit_price")
    elif model == "package":
        if "package_size" in obj:
            package_size = p.quantity(obj["package_size"], f"{path}.package_size", positive=True)
        if "package_price" in obj:
            package_price = p.price(obj["package_price"], f"{path}.package_price")
    elif "tiers" in obj:
        tiers = _tiers(p, obj["tiers"], f"{path}.tiers", model)

    if len(p.details) > errors_before:
        return None
    return Price(
        resource_type=resource_type,
        model=model,
        unit_price=unit_price or ZERO,
        free_units=free_units or ZERO,
        package_size=package_size,
        package_price=package_price,
        tiers=tiers,
    )


def _tiers(p: _Parser, value: object, path: str, model: str) -> tuple[Tier, ...]:
    items = p.array(value, path, _MAX_TIERS)
    if isinstance(value, list) and not value:
        p.error(path, "must have at least one tier")
    tiers: list[Tier] = []
    previous: Decimal | None = None
    for i, item in enumerate(items):
        tier_path = f"{path}[{i}]"
        obj = p.obj(item, tier_path, _TIER_FIELDS, required=("up_to",))
        if obj is None:
            continue
        if model == "stair_step" and "unit_price" in obj:
            # A stair step charges only flat fees: a unit price there would never be charged.
            p.error(f"{tier_path}.unit_price", "is not used by the stair_step model")
        last = i == len(items) - 1
        up_to: Decimal | None = None
        raw_up_to = obj.get("up_to")
        if raw_up_to is None:
            if "up_to" in obj and not last:
                p.error(f"{tier_path}.up_to", "only the last tier may have a null up_to")
        else:
            up_to = p.quantity(raw_up_to, f"{tier_path}.up_to")
            if last:
                p.error(f"{tier_path}.up_to", "the last tier's up_to must be null (no bound)")
            elif up_to is not None and previous is not None and up_to <= previous:
                p.error(
                    f"{tier_path}.up_to",
                    f"must be greater than the previous tier's up_to ({format_decimal(previous)})",
                )
            if up_to is not None:
                previous = up_to
        unit_price = p.price(obj.get("unit_price", 0), f"{tier_path}.unit_price")
        flat_fee = p.price(obj.get("flat_fee", 0), f"{tier_path}.flat_fee")
        tiers.append(Tier(up_to=up_to, unit_price=unit_price or ZERO, flat_fee=flat_fee or ZERO))
    return tuple(tiers)


def _fixed_fee(p: _Parser, value: object, path: str, places: int | None) -> FixedFee:
    obj = p.obj(
        value, path, frozenset({"description", "amount"}), required=("description", "amount")
    )
    if obj is None:
        return FixedFee("", ZERO)
    description = p.text(obj["description"], f"{path}.description") if "description" in obj else ""
    amount = p.money(obj["amount"], f"{path}.amount", places) if "amount" in obj else None
    return FixedFee(description=description, amount=amount or ZERO)


def _discount(p: _Parser, value: object, path: str, places: int | None) -> Discount:
    obj = p.obj(value, path, frozenset({"description", "percent", "amount"}))
    if obj is None:
        return Discount("")
    # A discount is not a bill line, so unlike a fixed fee it may go unnamed (as a Stripe coupon).
    description = p.text(obj["description"], f"{path}.description") if "description" in obj else ""
    if ("percent" in obj) == ("amount" in obj):
        p.error(path, "needs exactly one of percent or amount")
        return Discount(description)
    if "percent" in obj:
        percent = p.number(
            obj["percent"],
            f"{path}.percent",
            places=PERCENT_PLACES,
            digits=4,
            maximum=Decimal(MAX_PERCENT),
        )
        return Discount(description, percent=percent)
    return Discount(description, amount=p.money(obj["amount"], f"{path}.amount", places))


# Every object plan_to_json writes (plan, price, tier, fixed fee, discount) lists its
# members in this relative order, so one rank puts any of them back in order.
_MEMBER_ORDER = (
    "plan_id", "name", "currency", "prices", "fixed_fees", "discounts", "minimum_commitment",
    "resource_type", "model", "up_to", "unit_price", "package_size", "package_price", "tiers",
    "free_units", "flat_fee", "description", "percent", "amount",
)  # fmt: skip
_MEMBER_RANK = {name: rank for rank, name in enumerate(_MEMBER_ORDER)}


def in_plan_order(document: Any) -> Any:
    """A stored plan document (plan_to_json's output) with every object's members back in
    plan_to_json's order: PostgreSQL's jsonb keeps an order of its own (shortest first).

    Only the order changes; a member the rank does not know keeps its place after the rest.
    """
    if isinstance(document, dict):
        members = sorted(document, key=lambda m: _MEMBER_RANK.get(m, len(_MEMBER_RANK)))
        return {m: in_plan_order(document[m]) for m in members}
    if isinstance(document, list):
        return [in_plan_order(item) for item in document]
    return document


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """Render ``plan`` as a JSON-able dict: the body ``parse_plan`` takes, plus ``plan_id``.

    Prices and quantities are exact decimal strings with trailing zeros trimmed; fixed fees,
    discount amounts and the minimum commitment carry the currency's minor-unit digits.
    """
    currency = plan.currency

    def discount(d: Discount) -> dict[str, str]:
        # An unnamed discount is rendered without a description, so the document parses
        # back (a description, when given, must not be empty).
        named = {"description": d.description} if d.description else {}
        if d.percent is not None:
            return {**named, "percent": format_decimal(d.percent)}
        return {**named, "amount": format_money(d.amount or ZERO, currency)}

    return {
        "plan_id": plan.plan_id,
        "name": plan.name,
        "currency": currency,
        "prices": [_price_to_json(price) for price in plan.prices],
        "fixed_fees": [
            {"description": f.description, "amount": format_money(f.amount, currency)}
            for f in plan.fixed_fees
        ],
        "discounts": [discount(d) for d in plan.discounts],
        "minimum_commitment": format_money(plan.minimum_commitment, currency),
    }


def _price_to_json(price: Price) -> dict[str, Any]:
    out: dict[str, Any] = {"resource_type": price.resource_type, "model": price.model}
    if price.model == "per_unit":
        out["unit_price"] = format_decimal(price.unit_price)
    elif price.model == "package":
        out["package_size"] = format_decimal(price.package_size or ZERO)
        out["package_price"] = format_decimal(price.package_price or ZERO)
    else:
        out["tiers"] = [_tier_to_json(tier, price.model) for tier in price.tiers]
    out["free_units"] = format_decimal(price.free_units)
    return out


def _tier_to_json(tier: Tier, model: Model) -> dict[str, Any]:
    up_to = None if tier.up_to is None else format_decimal(tier.up_to)
    if model == "stair_step":
        return {"up_to": up_to, "flat_fee": format_decimal(tier.flat_fee)}
    return {
        "up_to": up_to,
        "unit_price": format_decimal(tier.unit_price),
        "flat_fee": format_decimal(tier.flat_fee),
    }
