"""A client that retries every unanswered request with its idempotency keys and keeps the
truth: what Tally acknowledged, in micro-units per (customer, resource type, hour).

It also checks every read it makes: a usage or bill read must include everything
acknowledged before it started and nothing beyond what was acknowledged or in flight when it
ended (a read during an outage may answer 503, never a partial total).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

Cell = tuple[str, str, datetime]  # customer, resource type, hour
Month = tuple[str, str]  # customer, "YYYY-MM"
MICRO = 1_000_000
RETRY_PAUSE = 0.05


def past_hours(count: int = 3) -> tuple[datetime, ...]:
    """The ``count`` whole hours before the current one (never in the future, however long
    a run lasts)."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return tuple(now - timedelta(hours=n) for n in range(count, 0, -1))


def micro(text: str) -> int:
    """A decimal quantity string from the API in integer micro-units (exactly)."""
    scaled = Decimal(text).scaleb(6)
    assert scaled == scaled.to_integral_value(), text
    return int(scaled)


def quantity(units: int) -> str:
    return f"{units // MICRO}.{units % MICRO:06d}"


def rfc3339(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP request: what it was, when (perf_counter_ns) and its status (0: no answer)."""

    kind: str  # single, batch, usage, bill
    started_ns: int
    ended_ns: int
    status: int


class UnexpectedAnswerError(AssertionError):
    """Tally answered something a correct server never answers to this client."""


@dataclass
class Client:
    """Sends events and retries each until it is answered; keeps the truth."""

    base_url: str
    key: str
    hours: tuple[datetime, ...] = field(default_factory=past_hours)
    customers: int = 5
    resources: tuple[str, ...] = ("api_call", "gb")
    key_prefix: str = "evt"
    give_up_after: float = 120.0
    truth: Counter[Cell] = field(default_factory=Counter)
    acked: Counter[Month] = field(default_factory=Counter)
    inflight: Counter[Month] = field(default_factory=Counter)
    attempts: list[Attempt] = field(default_factory=list)
    events: int = 0
    retries: int = 0
    duplicates: int = 0
    checked_reads: int = 0
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=5
        )

    def customer_ids(self) -> list[str]:
        return [f"cust:{n}" for n in range(self.customers)]

    def _event(self, rng: random.Random) -> tuple[dict[str, str], Cell, int]:
        cell = (
            f"cust:{rng.randrange(self.customers)}",
            rng.choice(self.resources),
            rng.choice(self.hours),
        )
        units = rng.randrange(1, 5 * MICRO)
        body = {
            "customer_id": cell[0],
            "resource_type": cell[1],
            "quantity": quantity(units),
            "timestamp": rfc3339(cell[2] + timedelta(seconds=rng.randrange(3600))),
            "idempotency_key": f"{self.key_prefix}-{next(self._numbers)}",
        }
        return body, cell, units

    async def _request(
        self, http: httpx.AsyncClient, kind: str, method: str, url: str, body: Any = None
    ) -> httpx.Response | None:
        started = time.perf_counter_ns()
        try:
            response = await http.request(method, url, json=body)
        except httpx.HTTPError:
            response = None
        status = 0 if response is None else response.status_code
        self.attempts.append(Attempt(kind, started, time.perf_counter_ns(), status))
        return response

    async def _deliver(
        self, http: httpx.AsyncClient, kind: str, url: str, body: Any, cells: list[tuple[Cell, int]]
    ) -> httpx.Response:
        """POST until answered (not 503, not a lost answer), then count ``cells`` as acked."""
        months = [((c, h.strftime("%Y-%m")), units) for (c, _, h), units in cells]
        for month, units in months:
            self.inflight[month] += units
        deadline = time.monotonic() + self.give_up_after
        while True:
            response = await self._request(http, kind, "POST", url, body)
            if response is not None and response.status_code != 503:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} unanswered for {self.give_up_after} s")
            self.retries += 1  # unknown outcome or unavailable: the same keys again
            await asyncio.sleep(RETRY_PAUSE)
        if response.status_code not in (200, 202):
            raise UnexpectedAnswerError(f"{kind}: {response.status_code} {response.text}")
        for cell, units in cells:
            self.truth[cell] += units
        for month, units in months:
            self.inflight[month] -= units
            self.acked[month] += units
        self.events += len(cells)
        return response

    async def ingest(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        """One event through ``POST /api/v1/usage``."""
        body, cell, units = self._event(rng)
        response = await self._deliver(http, "single", "/api/v1/usage", body, [(cell, units)])
        if response.status_code == 200:
            self.duplicates += 1  # an earlier attempt was applied; its answer was lost

    async def ingest_batch(self, http: httpx.AsyncClient, rng: random.Random, size: int) -> None:
        """``size`` events through ``POST /api/v1/usage/batch``."""
        made = [self._event(rng) for _ in range(size)]
        body = {"events": [b for b, _, _ in made]}
        cells = [(cell, units) for _, cell, units in made]
        response = await self._deliver(http, "batch", "/api/v1/usage/batch", body, cells)
        statuses = [r["status"] for r in response.json()["results"]]
        if response.status_code != 202 or set(statuses) - {"accepted", "duplicate"}:
            raise UnexpectedAnswerError(f"batch: {response.status_code} {response.text}")
        self.duplicates += statuses.count("duplicate")

    def _bounds(self, months: list[Month]) -> tuple[int, int]:
        acked = sum(self.acked[m] for m in months)
        return acked, acked + sum(self.inflight[m] for m in months)

    async def read_usage(self, http: httpx.AsyncClient, customer: str) -> int:
        """Read the customer's usage over the client's hours and check it; the status."""
        months = sorted({(customer, h.strftime("%Y-%m")) for h in self.hours})
        lower, _ = self._bounds(months)
        url = (
            f"/api/v1/usage/{quote(customer, safe='')}?granularity=hour"
            f"&from={rfc3339(self.hours[0])}&to={rfc3339(self.hours[-1] + timedelta(hours=1))}"
        )
        response = await self._request(http, "usage", "GET", url)
        if response is None or response.status_code == 503:
            return 0 if response is None else 503
        _, upper = self._bounds(months)
        if response.status_code == 404 and upper == 0:
            return 404  # no usage yet and no customer record
        if response.status_code != 200:
            raise UnexpectedAnswerError(f"usage: {response.status_code} {response.text}")
        got = sum(micro(p["quantity"]) for s in response.json()["series"] for p in s["points"])
        self._check_read("usage", customer, lower, got, upper)
        return 200

    async def read_bill(self, http: httpx.AsyncClient, customer: str, month: str) -> int:
        """Read the customer's bill for ``month`` (YYYY-MM) and check it; the status."""
        lower, _ = self._bounds([(customer, month)])
        url = f"/api/v1/billing/{quote(customer, safe='')}?period={month}"
        response = await self._request(http, "bill", "GET", url)
        if response is None or response.status_code == 503:
            return 0 if response is None else 503
        _, upper = self._bounds([(customer, month)])
        if response.status_code == 404 and upper == 0:
            return 404  # no usage yet and no customer record
        if response.status_code != 200:
            raise UnexpectedAnswerError(f"bill: {response.status_code} {response.text}")
        lines = response.json()["lines"]
        got = sum(micro(line["quantity"]) for line in lines if line["type"] == "usage")
        self._check_read("bill", customer, lower, got, upper)
        return 200

    def _check_read(self, kind: str, customer: str, lower: int, got: int, upper: int) -> None:
        if not lower <= got <= upper:
            raise AssertionError(
                f"{kind} of {customer}: {got} µ, outside [acknowledged before the read "
                f"{lower} µ, acknowledged or in flight after it {upper} µ]"
            )
        self.checked_reads += 1


@dataclass(frozen=True, slots=True)
class Load:
    """Concurrent workers of each kind, and how long each pauses after a request (with its
    retries) is answered."""

    singles: int = 8
    batches: int = 0
    readers: int = 0
    batch_size: int = 50
    single_pause: float = 0.0
    batch_pause: float = 0.0
    read_pause: float = 0.0


async def under_load(client: Client, chaos: Callable[[], Awaitable[None]], load: Load) -> None:
    """Run ``load`` until ``chaos`` is over; a failure of either cancels the other."""
    stop = asyncio.Event()

    async def chaos_then_stop() -> None:
        try:
            await chaos()
        finally:
            stop.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(run_load(client, stop, load))
        tg.create_task(chaos_then_stop())


async def run_load(client: Client, stop: asyncio.Event, load: Load, seed: int = 11) -> None:
    """Run ``load`` until ``stop`` is set; every request started is finished (answered)."""
    async with client.http() as http:

        async def worker(n: int, step: Any, pause: float) -> None:
            rng = random.Random(seed * 1000 + n)
            while not stop.is_set():
                await step(http, rng)
                await asyncio.sleep(pause)

        async def batch(http: httpx.AsyncClient, rng: random.Random) -> None:
            await client.ingest_batch(http, rng, rng.randint(1, load.batch_size))

        async def read(http: httpx.AsyncClient, rng: random.Random) -> None:
            customer = rng.choice(client.customer_ids())
            if rng.random() < 0.5:
                await client.read_usage(http, customer)
            else:
                await client.read_bill(http, customer, rng.choice(client.hours).strftime("%Y-%m"))

        steps = (
            [(client.ingest, load.single_pause)] * load.singles
            + [(batch, load.batch_pause)] * load.batches
            + [(read, load.read_pause)] * load.readers
        )
        await asyncio.gather(*(worker(n, *step) for n, step in enumerate(steps)))
