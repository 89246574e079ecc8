"""The ``tally`` command line (CONTRACT.md §1)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import asyncpg

from app import apikeys
from app.apikeys import Scope
from app.ids import id_problem
from app.logs import configure_logging
from app.repo import migrations, tenants
from app.repo.pool import connect
from app.settings import Settings, SettingsError


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def _interval(text: str) -> float:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return float(value)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (0-65535): {text!r}")
    return int(text)


def _workers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="tally", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply sql/ migrations to DATABASE_URL")

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key (and its tenant if missing)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--scope", required=True, choices=[s.value for s in Scope])
    create.add_argument("--customer", help="bind a read key to one customer")
    create.add_argument("--name", help="a label for the key")
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key", help="the key text or its id (the part after tly_)")

    serve = sub.add_parser("serve", help="run the HTTP API (and the flusher)")
    serve.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a server listens
    serve.add_argument("--port", type=_port, default=8080)
    serve.add_argument("--workers", type=_workers, default=1)
    serve.add_argument("--no-flusher", action="store_true")

    flush = sub.add_parser("flush", help="run the standalone flusher")
    flush.add_argument("--once", action="store_true", help="drain everything, commit, exit")
    flush.add_argument("--interval", type=_interval, help="seconds between cycles")
    flush.add_argument(
        "--check", action="store_true", help="exit 0 only if a flusher heartbeat is fresh"
    )
    flush.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        help="serve Prometheus metrics on this port (off by default)",
    )

    dev = sub.add_parser("dev", help="everything on one machine, no set-up")
    # A string default goes through type= too: a bad PORT is refused like a bad --port.
    dev.add_argument("--port", type=_port, default=os.environ.get("PORT", "8080"))
    dev.add_argument("--host", default="127.0.0.1")
    return parser


def _settings(require_urls: bool = True) -> Settings:
    try:
        return Settings.from_env(os.environ, require_urls=require_urls)
    except SettingsError as exc:
        raise CliError(str(exc)) from None


async def run_migrate(settings: Settings) -> list[str]:
    """Apply pending migrations; return their names."""
    conn = await connect(settings)
    try:
        applied = await migrations.migrate(conn)
    finally:
        await conn.close()
    return [f"{m.version:04d}_{m.name}" for m in applied]


async def create_key(
    settings: Settings, tenant: str, scope: Scope, customer: str | None, name: str | None
) -> str:
    """Create a key (and the tenant if missing); return the key text."""
    for label, value in (("--tenant", tenant), ("--customer", customer)):
        if value is not None and (problem := id_problem(value)):
            raise CliError(f"{label} {problem}")
    if customer is not None and scope is not Scope.READ:
        raise CliError("--customer only applies to --scope read")
    new = apikeys.generate()
    conn = await connect(settings)
    try:
        await tenants.create_key(conn, tenant, scope, new, customer, name)
    finally:
        await conn.close()
    return new.text


async def _revoke(settings: Settings, key: str) -> bool:
    key_id = apikeys.key_id_of(key) or key
    conn = await connect(settings)
    try:
        return await tenants.revoke_key(conn, key_id)
    finally:
        await conn.close()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "dev":
        from app.dev import run_dev

        return run_dev(host=args.host, port=args.port)
    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "migrate":
        applied = asyncio.run(run_migrate(settings))
        print("applied: " + ", ".join(applied) if applied else "migrations are up to date")
        return 0
    if args.command == "keys":
        if args.keys_command == "create":
            text = asyncio.run(
                create_key(settings, args.tenant, Scope(args.scope), args.customer, args.name)
            )
            print(f"created {args.scope} key for tenant {args.tenant}", file=sys.stderr)
            print(text, flush=True)
            return 0
        if not asyncio.run(_revoke(settings, args.key)):
            raise CliError("no such live key")
        print("revoked")
        return 0
    if args.command == "serve":
        from app.serve import serve

        return serve(settings, args.host, args.port, args.workers, not args.no_flusher)
    if args.command == "flush":
        from app.worker.main import run_flush_command

        return run_flush_command(
            settings,
            once=args.once,
            check=args.check,
            interval=args.interval,
            metrics_port=args.metrics_port,
        )
    raise CliError(f"unknown command {args.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tally`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except CliError as exc:
        print(f"tally: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tally: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
