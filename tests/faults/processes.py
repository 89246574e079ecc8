"""A whole Tally deployment of separate processes that a test can kill, stop and freeze.

Redis (AOF, ``appendfsync always``, noeviction) and a migrated PostgreSQL of the test's own,
``tally serve --no-flusher`` and ``tally flush`` on free loopback ports. Every child dies
with the thread that started it (PR_SET_PDEATHSIG) and :func:`deployment` stops all of them
on the way out, whatever happened, so a failed test leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis import Redis as SyncRedis

from app.apikeys import Scope
from app.embedded import PostgresServer, RedisServer, die_with_parent, free_port
from tests.keys import make_key
from tests.servers import own_servers, process_env, scratch_dir

START_TIMEOUT = 30.0


@dataclass
class TallyProcess:
    """``python -m <module> ARGS`` with its output in a log file; killable and restartable."""

    args: tuple[str, ...]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        """Start the process (again); call from a thread that outlives it (the main one)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=lambda: die_with_parent(signal.SIGKILL),  # noqa: PLW1509
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and wait for the process to go (SIGKILL after 30 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@dataclass
class Api(TallyProcess):
    """``tally serve --no-flusher`` on 127.0.0.1:port."""

    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        """Wait until ``/health`` answers (the process is serving)."""
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(timeout=1) as http:
            while time.monotonic() < deadline:
                assert self.running(), f"tally serve exited: see {self.log}"
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/health")).is_success:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"tally serve did not start in {START_TIMEOUT} s: see {self.log}")

    async def restart(self) -> None:
        self.start()
        await self.ready()


@dataclass
class Deployment:
    """Servers, processes and an admin key of one tenant."""

    redis: RedisServer
    postgres: PostgresServer
    env: dict[str, str]
    api: Api
    flusher: TallyProcess
    key: str
    tenant: str
    logs: Path

    async def start(self) -> None:
        """Start the API and the flusher and wait until the API serves."""
        self.api.start()
        self.flusher.start()
        await self.api.ready()

    def redis_client(self) -> SyncRedis:
        return SyncRedis.from_url(self.redis.url, socket_timeout=5)


BASE_ENV = {
    "TALLY_FLUSH_INTERVAL": "0.1",
    "TALLY_LOG_LEVEL": "warning",
    "TALLY_REDIS_TIMEOUT": "0.5",
    "TALLY_DATABASE_TIMEOUT": "1",
    "TALLY_STARTUP_TIMEOUT": "20",
    # The shortest age the time-outs above allow (10 × 1.5 s), rolling up every second:
    # longer scenarios and the soak roll up under their faults, and bills read the totals.
    "TALLY_ROLLUP_AGE": "15",
    "TALLY_ROLLUP_INTERVAL": "1",
}


@contextlib.asynccontextmanager
async def deployment(
    tenant: str = "faults", flusher_env: dict[str, str] | None = None, **env: str
) -> AsyncIterator[Deployment]:
    """Start the servers and make a key; the API and the flusher start with
    :meth:`Deployment.start`. Everything is stopped on the way out.

    Servers start in the loop's default executor, whose threads live as long as the loop:
    the servers die with the thread that started them.
    """
    redis_server, postgres = await asyncio.to_thread(own_servers)
    logs = scratch_dir("tally-faults-logs-")
    environment = process_env(redis_server.url, postgres.url, **{**BASE_ENV, **env})
    api = Api(("app", "serve", "--no-flusher"), environment, logs / "api.log")
    api.args = (*api.args, "--host", "127.0.0.1", "--port", str(api.port))
    flusher = TallyProcess(
        ("app.worker",), {**environment, **(flusher_env or {})}, logs / "flusher.log"
    )
    try:
        key = await make_key(postgres.url, tenant, Scope.ADMIN)
        yield Deployment(redis_server, postgres, environment, api, flusher, key, tenant, logs)
    finally:
        if postgres.proc is not None and postgres.proc.poll() is None:
            postgres.thaw()  # a frozen server would never see the signal to stop
        api.kill()
        flusher.kill()
        await asyncio.to_thread(redis_server.stop)
        await asyncio.to_thread(postgres.stop)
