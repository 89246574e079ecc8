"""The end of every fault scenario: exact equality, per (customer, resource type, hour),
between the client's truth, what Tally holds (usage_records + Redis) and its read API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

import asyncpg
import redis.asyncio as aioredis

from tests.faults.client import Cell, Client, micro, rfc3339
from tests.faults.processes import Deployment
from tests.integration.flush_helpers import cold_totals, leftovers

DRAIN_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Equality:
    """What the final check compared (it raises on any difference)."""

    cells: int
    events: int
    micro: int
    # Flushes the flushers rolled up meanwhile (the bills read those as monthly totals).
    rolled_up: int = 0


def differences(truth: Counter[Cell], seen: Counter[Cell], where: str) -> list[str]:
    """Every cell where ``seen`` differs from ``truth``, described."""
    return [
        f"{where}: {cell[0]} {cell[1]} {cell[2]:%Y-%m-%dT%H}h: {seen[cell]} µ, "
        f"truth {truth[cell]} µ"
        for cell in sorted(set(truth) | set(seen))
        if seen[cell] != truth[cell]
    ]


def assert_equal(truth: Counter[Cell], seen: Counter[Cell], where: str) -> None:
    found = differences(truth, seen, where)
    assert not found, f"{len(found)} cells differ, e.g.\n" + "\n".join(found[:10])


async def api_cells(client: Client) -> Counter[Cell]:
    """Usage per cell from ``GET /api/v1/usage`` (hot + in flight + flushed)."""
    seen: Counter[Cell] = Counter()
    span = f"from={rfc3339(client.hours[0])}&to={rfc3339(client.hours[-1] + timedelta(hours=1))}"
    async with client.http() as http:
        for customer in client.customer_ids():
            url = f"/api/v1/usage/{quote(customer, safe='')}?granularity=hour&{span}"
            response = await http.get(url)
            assert response.status_code == 200, response.text
            for series in response.json()["series"]:
                for point in series["points"]:
                    hour = datetime.fromisoformat(point["start"])
                    seen[(customer, series["resource_type"], hour)] += micro(point["quantity"])
    return +seen


async def assert_bills(client: Client) -> None:
    """Each customer's bill has, per resource type, the month's truth."""
    months = {h.strftime("%Y-%m") for h in client.hours}
    async with client.http() as http:
        for customer in client.customer_ids():
            for month in sorted(months):
                expected = Counter[str]()
                for (c, resource, hour), units in client.truth.items():
                    if c == customer and hour.strftime("%Y-%m") == month:
                        expected[resource] += units
                response = await http.get(
                    f"/api/v1/billing/{quote(customer, safe='')}?period={month}"
                )
                if not expected and response.status_code == 404:
                    continue
                assert response.status_code == 200, response.text
                seen = Counter(
                    {
                        line["resource_type"]: micro(line["quantity"])
                        for line in response.json()["lines"]
                        if line["type"] == "usage"
                    }
                )
                assert +seen == expected, (customer, month, seen, expected)


async def wait_drained(d: Deployment, within: float = DRAIN_TIMEOUT) -> None:
    """Wait until the running flusher left nothing hot or pending (it survived the faults)."""
    client = aioredis.Redis.from_url(d.redis.url)
    try:
        deadline = time.monotonic() + within
        while left := await leftovers(client, d.tenant):
            assert d.flusher.running(), f"the flusher exited: see {d.flusher.log}"
            assert time.monotonic() < deadline, f"not flushed in {within} s: {left[:5]}"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


def flush_once(d: Deployment) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.worker", "--once"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


# Rows where usage_monthly is not the sum of its month's rolled-up (seq = 0) rows.
_MONTHLY_MISMATCHES = """
    SELECT tenant, customer_id, month, resource_type, m.quantity AS monthly, r.quantity AS rows
    FROM usage_monthly m
    FULL JOIN (
        SELECT tenant, customer_id, date_trunc('month', bucket_start, 'UTC') AS month,
               resource_type, sum(quantity) AS quantity
        FROM usage_records WHERE seq = 0
        GROUP BY 1, 2, 3, 4
    ) r USING (tenant, customer_id, month, resource_type)
    WHERE m.quantity IS DISTINCT FROM r.quantity
"""


async def assert_monthly_totals(database_url: str) -> int:
    """usage_monthly holds the sum of the rolled-up rows, month by month; returns how many
    flushes were rolled up."""
    conn = await asyncpg.connect(database_url)
    try:
        mismatches = await conn.fetch(_MONTHLY_MISMATCHES)
        rolled = await conn.fetchval("SELECT count(*) FROM flushes WHERE rolled_up")
    finally:
        await conn.close()
    assert [dict(r) for r in mismatches] == []
    return int(rolled)


async def assert_exact(d: Deployment, client: Client) -> Equality:
    """The read API before the flush, the cold store after it, the API again and the bills:
    each equal to the truth, cell by cell."""
    truth = +client.truth
    assert_equal(truth, await api_cells(client), "usage API (hot + cold)")
    await wait_drained(d)
    await asyncio.to_thread(flush_once, d)
    cold = await cold_totals(d.env["DATABASE_URL"])
    stored = Counter({(c, r, h): q for (t, c, r, h), q in cold.items() if t == d.tenant})
    assert_equal(truth, stored, "usage_records")
    assert_equal(truth, await api_cells(client), "usage API (flushed)")
    await assert_bills(client)
    rolled = await assert_monthly_totals(d.env["DATABASE_URL"])
    return Equality(len(truth), client.events, sum(truth.values()), rolled)
