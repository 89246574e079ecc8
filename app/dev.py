"""``tally dev``: embedded servers, migrations, an admin key, the API and the flusher."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from app.apikeys import Scope
from app.embedded import PostgresServer, RedisServer, find_postgres_bindir, find_redis_server
from app.logs import configure_logging
from app.settings import Settings, SettingsError
from app.signals import exit_quietly_on_signals

DATA_DIR = Path(".tally")


def run_dev(host: str, port: int) -> int:
    """Run everything until Ctrl-C / SIGTERM, then stop it all in order and return 0.

    Order on the way out: stop serving, the flusher's final flush (in the lifespan),
    then PostgreSQL and Redis.
    """
    env = dict(os.environ)
    env.setdefault("TALLY_LOG_FORMAT", "console")
    try:
        settings = Settings.from_env(env, require_urls=False)
    except SettingsError as exc:
        print(f"tally: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    with contextlib.ExitStack() as stack, exit_quietly_on_signals():
        redis_url, database_url = settings.redis_url, settings.database_url
        if not redis_url:
            redis = RedisServer(
                DATA_DIR.resolve() / "redis", binary=find_redis_server(prefer_embedded=True)
            )
            stack.callback(redis.stop)
            redis_url = redis.start().url
            print(f"redis: {redis.binary} on {redis_url}", file=sys.stderr)
        if not database_url:
            postgres = PostgresServer(
                DATA_DIR.resolve() / "postgres", bindir=find_postgres_bindir(prefer_embedded=True)
            )
            stack.callback(postgres.stop)
            database_url = postgres.start().dsn("postgres")
            print(f"postgresql: {postgres.bindir} on {database_url}", file=sys.stderr)
        settings = settings.with_urls(redis_url, database_url)
        # Worker processes and the flusher read the same servers from the environment.
        os.environ["REDIS_URL"], os.environ["DATABASE_URL"] = redis_url, database_url

        from app.cli import create_key, run_migrate

        asyncio.run(run_migrate(settings))
        key = asyncio.run(create_key(settings, "default", Scope.ADMIN, None, "tally dev"))
        print(f"admin key: {key}", flush=True)

        from app.serve import serve

        serve(settings, host, port, workers=1, flusher=True)
    return 0
