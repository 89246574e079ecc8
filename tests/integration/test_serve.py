"""`tally serve` runs one flusher per server and flushes on SIGTERM (real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from app.apikeys import Scope
from app.embedded import descendants, free_port
from app.hotpath.keys import HEARTBEAT
from app.settings import Settings
from tests.integration.flush_helpers import first_cycle_done
from tests.keys import make_key
from tests.servers import finish, process_env, start_serve, wait_ready

pytestmark = pytest.mark.slow


async def _flushed_total(database_url: str) -> Decimal:
    conn = await asyncpg.connect(database_url)
    try:
        total = await conn.fetchval(
            "SELECT coalesce(sum(quantity), 0) FROM usage_records WHERE tenant = 'served'"
        )
    finally:
        await conn.close()
    return Decimal(total)


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_flushes_and_stops_on_sigterm(
    settings: Settings, redis: aioredis.Redis, database_url: str, workers: int
) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute("TRUNCATE usage_records, usage_monthly, flushes")
    await conn.close()
    key = await make_key(database_url, "served", Scope.INGEST)
    port = free_port()
    env = process_env(
        settings.redis_url, database_url, TALLY_FLUSH_INTERVAL="3600", TALLY_LOG_LEVEL="warning"
    )
    await redis.delete(HEARTBEAT)
    server = start_serve(env, port, "--workers", str(workers))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
            await first_cycle_done(redis)  # ingest only after the flusher's first cycle
            for i in range(30):
                response = await client.post(
                    "/api/v1/usage",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"customer_id": f"c{i % 3}", "resource_type": "r", "quantity": "1.5"},
                )
                assert response.status_code == 202
        # The interval is an hour: only the first (empty) cycle ran, nothing is flushed yet.
        assert await _flushed_total(database_url) == 0
    finally:
        _, err = finish(server, sig=signal.SIGTERM)
    assert server.returncode == 0, err[-3000:]
    assert await _flushed_total(database_url) == Decimal("45")  # the final flush


# Command-line parts (NUL-separated in /proc) of the children `tally serve --workers N` runs.
FLUSHER = b"-m\x00app.worker\x00"
API_WORKER = b"-m\x00app.asgi\x00"


def _children(pid: int, marker: bytes) -> list[int]:
    """Processes under ``pid`` whose command line contains ``marker``."""
    found = []
    for child in descendants(pid)[1:]:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if marker in cmdline:
            found.append(child)
    return found


def test_serve_restarts_a_dead_flusher(settings: Settings, database_url: str) -> None:
    port = free_port()
    env = process_env(settings.redis_url, database_url, TALLY_LOG_LEVEL="warning")
    server = start_serve(env, port, "--workers", "2")
    try:
        deadline = time.monotonic() + 30
        while not _children(server.pid, FLUSHER) and time.monotonic() < deadline:
            time.sleep(0.1)
        (first,) = _children(server.pid, FLUSHER)
        os.kill(first, signal.SIGKILL)
        restarted: list[int] = []
        while time.monotonic() < deadline + 30:
            restarted = [p for p in _children(server.pid, FLUSHER) if p != first]
            if restarted:
                break
            time.sleep(0.1)
        assert restarted, "the flusher was not restarted"
    finally:
        _, err = finish(server, sig=signal.SIGTERM)
    assert server.returncode == 0, err[-3000:]
    # The restarted flusher got one SIGTERM, not two: a second one would cancel its final
    # flush (PDEATHSIG follows the thread that started a child: the supervisor restarts it
    # from the main thread, which outlives it).
    assert "flusher.cancelled" not in err, err[-3000:]


# -- several workers: app/workers.py ------------------------------------------------------


def _sockets(port: int, state: str) -> set[str]:
    """Inodes of the IPv4 TCP sockets on local ``port`` in ``state`` (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def _connection_owners(port: int, pids: list[int]) -> dict[int, int]:
    """How many established connections to ``port`` each of ``pids`` holds."""
    inodes = _sockets(port, "01")  # ESTABLISHED
    owners: dict[int, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners[pid] = owners.get(pid, 0) + 1
    return owners


def _wait_listening(port: int, count: int, timeout: float = 30) -> set[str]:
    """Wait until ``count`` sockets listen on ``port`` (one per worker); their inodes."""
    deadline = time.monotonic() + timeout
    while len(listening := _sockets(port, "0A")) != count:  # 0A: LISTEN
        assert time.monotonic() < deadline, f"{len(listening)} sockets listen, not {count}"
        time.sleep(0.1)
    return listening


def _stop(server: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = finish(server, sig=signal.SIGTERM)
    return server.returncode, err


def test_workers_share_keep_alive_connections(settings: Settings, database_url: str) -> None:
    # 16 connections opened at once and kept alive: with one listening socket shared by the
    # workers, one worker accepted all of them (seen with wrk); each worker's own socket
    # (SO_REUSEPORT) lets the kernel spread them. Both getting none: (1/2)^15, not flaky.
    port = free_port()
    env = process_env(settings.redis_url, database_url, TALLY_LOG_LEVEL="warning")
    server = start_serve(env, port, "--workers", "2", "--no-flusher")
    connections: list[socket.socket] = []
    try:
        wait_ready(port)
        workers = _children(server.pid, API_WORKER)
        assert len(workers) == 2
        _wait_listening(port, 2)  # /ready answers once the first worker listens
        for _ in range(16):
            connections.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for conn in connections:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: tally\r\n\r\n")
        for conn in connections:
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        owners = _connection_owners(port, workers)
        assert sum(owners.values()) == 16, owners
        assert set(owners) == set(workers), owners
    finally:
        for conn in connections:
            conn.close()
        code, err = _stop(server)
    assert code == 0, err[-3000:]


def _replaced(server: subprocess.Popen[str], port: int, gone: int) -> None:
    """Wait until the worker ``gone`` has been replaced by one that listens on ``port``."""
    deadline = time.monotonic() + 30
    while True:
        workers = _children(server.pid, API_WORKER)
        if gone not in workers and len(workers) == 2 and len(_sockets(port, "0A")) == 2:
            break
        assert time.monotonic() < deadline, f"not replaced: workers {workers}"
        time.sleep(0.1)
    for _ in range(20):  # new connections are all answered, by both workers
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("sig", "timeout", "event"),
    [
        (signal.SIGKILL, "10", "serve.worker_died"),
        # A stopped worker keeps its share of new connections (its own socket): its
        # heartbeat stops, and after TALLY_WORKER_TIMEOUT the supervisor kills it.
        (signal.SIGSTOP, "3", "serve.worker_unresponsive"),
    ],
    ids=["dead", "silent"],
)
def test_a_dead_or_silent_worker_is_replaced(
    settings: Settings, database_url: str, sig: int, timeout: str, event: str
) -> None:
    port = free_port()
    env = process_env(
        settings.redis_url, database_url, TALLY_LOG_LEVEL="warning", TALLY_WORKER_TIMEOUT=timeout
    )
    server = start_serve(env, port, "--workers", "2", "--no-flusher")
    try:
        wait_ready(port)
        _wait_listening(port, 2)
        first, second = _children(server.pid, API_WORKER)
        os.kill(first, sig)
        _replaced(server, port, first)
        assert second in _children(server.pid, API_WORKER)
    finally:
        code, err = _stop(server)
    assert code == 0, err[-3000:]
    assert event in err


def test_a_worker_that_cannot_start_stops_the_server(database_url: str) -> None:
    # Nothing listens on Redis's port: every worker's start-up fails, and restarting it
    # would fail the same way, so the server exits 1 instead of restarting forever.
    env = process_env(
        f"redis://127.0.0.1:{free_port()}/0",
        database_url,
        TALLY_STARTUP_TIMEOUT="1",
        TALLY_LOG_LEVEL="info",
    )
    server = start_serve(env, free_port(), "--workers", "2", "--no-flusher")
    _, err = finish(server, timeout=60)
    assert server.returncode == 1, err[-3000:]
    assert "serve.worker_failed_to_start" in err


def test_a_port_in_use_is_refused(settings: Settings, database_url: str) -> None:
    # Held with SO_REUSEPORT, as another `tally serve` would: the workers' own binds would
    # succeed beside it and the two servers would share the port. The server's claim on
    # the port is what refuses it.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = process_env(settings.redis_url, database_url)
        server = start_serve(env, port, "--workers", "2", "--no-flusher")
        _, err = finish(server, timeout=30)
    assert server.returncode == 1
    assert "serve.port_in_use" in err
