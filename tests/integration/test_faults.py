"""Fault scenarios with separate processes and a client that retries unknown outcomes.

`tally serve --no-flusher` and `tally flush` run as their own processes; the client keeps
the truth of what must be counted (every event it sends is retried with the same
idempotency key until it gets an answer), and after each scenario the cold store, what is
left in Redis and the bill API must all equal that truth exactly.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from app.apikeys import Scope
from app.embedded import PostgresServer, RedisServer, free_port
from tests.integration.flush_helpers import cold_totals
from tests.keys import make_key
from tests.servers import own_servers, process_env

pytestmark = pytest.mark.slow
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class Api:
    """A `tally serve --no-flusher` process that can be killed and restarted."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-flusher",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("tally serve did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Client:
    """Sends events and retries each until it is answered; keeps the truth."""

    base_url: str
    key: str
    truth: Counter[tuple[str, str]] = field(default_factory=Counter)
    retries: int = 0
    duplicates: int = 0

    async def send(self, http: httpx.AsyncClient, n: int, rng: random.Random) -> None:
        customer = f"cust:{rng.randrange(5)}"
        quantity = Decimal(rng.randrange(1, 10**6)) / 10**6
        body = {
            "customer_id": customer,
            "resource_type": "api",
            "quantity": str(quantity),
            "timestamp": HOUR.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "idempotency_key": f"evt-{n}",
        }
        while True:
            try:
                response = await http.post(
                    f"{self.base_url}/api/v1/usage",
                    json=body,
                    headers={"Authorization": f"Bearer {self.key}"},
                )
            except httpx.HTTPError:
                self.retries += 1  # unknown outcome: retry with the same key
                await asyncio.sleep(0.05)
                continue
            if response.status_code in (202, 200):
                if response.status_code == 200:
                    self.duplicates += 1
                self.truth[(customer, "api")] += int(quantity * 10**6)
                return
            assert response.status_code == 503, response.text
            self.retries += 1
            await asyncio.sleep(0.05)


@pytest.fixture
def stack() -> Iterator[tuple[RedisServer, PostgresServer, dict[str, str]]]:
    redis, postgres = own_servers()
    env = process_env(
        redis.url,
        postgres.url,
        TALLY_FLUSH_INTERVAL="0.1",
        TALLY_LOG_LEVEL="warning",
        TALLY_REDIS_TIMEOUT="0.5",
        TALLY_STARTUP_TIMEOUT="20",
    )
    yield redis, postgres, env
    redis.stop()
    postgres.stop()


async def _load(client: Client, events: int, workers: int = 8) -> None:
    rng = random.Random(11)
    numbers = iter(range(events))
    async with httpx.AsyncClient(timeout=5) as http:

        async def worker() -> None:
            for n in numbers:
                await client.send(http, n, rng)

        await asyncio.gather(*(worker() for _ in range(workers)))


async def _check(client: Client, env: dict[str, str], api: Api) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.worker", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cold = await cold_totals(env["DATABASE_URL"])
    assert {(c, r): q for (_, c, r, _), q in cold.items()} == dict(client.truth)
    async with httpx.AsyncClient(base_url=api_url(api)) as http:
        for (customer, _), micro in client.truth.items():
            response = await http.get(
                f"/api/v1/usage/{customer}", headers={"Authorization": f"Bearer {client.key}"}
            )
            points = response.json()["series"][0]["points"]
            assert sum(Decimal(p["quantity"]) for p in points) == Decimal(micro).scaleb(-6)


def api_url(api: Api) -> str:
    return f"http://127.0.0.1:{api.port}"


async def _under_chaos(
    stack: tuple[RedisServer, PostgresServer, dict[str, str]],
    victim: Callable[[Api], tuple[Callable[[], object], Callable[[], object]]],
    down_for: float,
) -> None:
    """1,500 events with retries while ``victim`` is killed and restarted three times,
    then exact totals everywhere."""
    _, postgres, env = stack
    key = await make_key(postgres.url, "faults", Scope.ADMIN)
    api = Api(env)
    await asyncio.to_thread(api.start)
    flusher = subprocess.Popen(
        [sys.executable, "-m", "app.worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Client(api_url(api), key)
    kill, restart = victim(api)

    async def chaos() -> None:
        for _ in range(3):
            await asyncio.sleep(0.7)
            await asyncio.to_thread(kill)
            await asyncio.sleep(down_for)
            await asyncio.to_thread(restart)

    try:
        await asyncio.gather(_load(client, 1500), chaos())
        assert client.retries > 0  # the kills really interrupted requests
        await _check(client, env, api)
    finally:
        flusher.send_signal(signal.SIGTERM)
        flusher.wait(timeout=30)
        api.kill()


async def test_api_sigkilled_under_load_retries_give_exact_totals(
    stack: tuple[RedisServer, PostgresServer, dict[str, str]],
) -> None:
    await _under_chaos(stack, lambda api: (api.kill, api.start), down_for=0.2)


async def test_redis_sigkilled_under_load_loses_nothing(
    stack: tuple[RedisServer, PostgresServer, dict[str, str]],
) -> None:
    redis = stack[0]
    # SIGKILL, then a restart on its AOF (appendfsync always).
    await _under_chaos(stack, lambda _: (redis.kill, redis.start), down_for=0.3)
