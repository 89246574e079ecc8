"""Throwaway servers and databases for the test suite.

Real Redis and PostgreSQL are started from binaries on PATH (else the pip-installed
embedded ones) unless REDIS_URL / DATABASE_URL point at servers to use instead.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from app.embedded import PostgresServer, RedisServer
from app.repo import migrations

_counter = itertools.count()


def scratch_dir(prefix: str) -> Path:
    """A temporary directory that an unprivileged PostgreSQL can use."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass
class PostgresCluster:
    """A PostgreSQL server with a migrated template database to clone per test module."""

    admin_url: str
    server: PostgresServer | None = None
    template: str = "tally_template"

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.admin_url, timeout=30)

    async def prepare_template(self) -> None:
        """(Re)create the template database with every migration applied."""
        self.template = f"tally_template_{os.getpid()}"
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.template}"')
            await conn.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await conn.close()
        target = await asyncpg.connect(with_database(self.admin_url, self.template))
        try:
            await migrations.migrate(target)
        finally:
            await target.close()

    async def clone(self) -> str:
        """A fresh migrated database; returns its URL."""
        name = f"tally_test_{os.getpid()}_{next(_counter)}"
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await conn.close()
        return with_database(self.admin_url, name)

    async def empty(self) -> str:
        """A fresh database with no migrations applied; returns its URL."""
        name = f"tally_empty_{os.getpid()}_{next(_counter)}"
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return with_database(self.admin_url, name)

    async def drop(self, url: str) -> None:
        """Drop a database made by :meth:`clone` / :meth:`empty`."""
        name = urlsplit(url).path.lstrip("/")
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def start_postgres() -> PostgresCluster:
    """Use DATABASE_URL's server, or start a throwaway one."""
    given = os.environ.get("DATABASE_URL")
    if given:
        cluster = PostgresCluster(admin_url=given)
    else:
        server = PostgresServer(scratch_dir("tally-pg-"), durable=False).start()
        cluster = PostgresCluster(admin_url=server.url, server=server)
    asyncio.run(cluster.prepare_template())
    return cluster


def start_redis() -> tuple[str, RedisServer | None]:
    """Use REDIS_URL's server, or start a throwaway one."""
    given = os.environ.get("REDIS_URL")
    if given:
        return given, None
    server = RedisServer(scratch_dir("tally-redis-"), appendonly=False).start()
    return server.url, server


def own_servers(*, appendonly: bool = True) -> tuple[RedisServer, PostgresServer]:
    """A Redis and a migrated PostgreSQL of a test's own (to kill, stop or fill)."""
    redis = RedisServer(scratch_dir("tally-own-redis-"), appendonly=appendonly).start()
    postgres = PostgresServer(scratch_dir("tally-own-pg-")).start()

    async def migrate() -> None:
        conn = await asyncpg.connect(postgres.url)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(migrate())
    return redis, postgres


def process_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """Environment for a `tally` subprocess: this one's, minus any Tally or metrics settings,
    pointing at the given servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALLY_", "PROMETHEUS"))}
    env.update({"REDIS_URL": redis_url, "DATABASE_URL": database_url, **extra})
    return env


def start_serve(env: dict[str, str], port: int, *args: str) -> subprocess.Popen[str]:
    """``tally serve`` on 127.0.0.1:port as a subprocess (output captured)."""
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(port: int, path: str = "/ready", timeout: float = 60) -> None:
    """Poll ``path`` on 127.0.0.1:port until it answers 200; AssertionError after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server did not answer 200 on {path}")


def finish(
    proc: subprocess.Popen[str], timeout: float = 40, sig: int | None = None
) -> tuple[str, str]:
    """Send ``sig`` (if any) and wait for ``proc`` to exit; its (stdout, stderr). Killed
    if it is still running after ``timeout`` s or when the wait fails."""
    try:
        if sig is not None:
            proc.send_signal(sig)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
