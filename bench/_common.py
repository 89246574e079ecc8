"""Shared plumbing of the benchmarks: throwaway servers, processes, wrk, CPU accounting.

Not a benchmark itself (the leading underscore keeps ``python -m bench`` from running it).
Every server and process started here is ours, bound to 127.0.0.1, stopped at the end of
its ``with`` block, and asked by the kernel to die with us (PR_SET_PDEATHSIG) if we crash.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.embedded import PostgresServer, RedisServer, descendants, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WRK_DIR = Path(__file__).resolve().parent / "wrk"
BIN = Path(sys.executable).parent
TALLY = str(BIN / "tally") if (BIN / "tally").exists() else "tally"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- reporting ------------------------------------------------------------------------


def cpu() -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model: hosts of one machine
    kind differ (one "Intel(R) Xeon(R) Processor" did a bill in half another's CPU time,
    docs/benchmarks.md §12), and a VM's model name alone may not tell them apart."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if not name.strip():
                break  # the first processor's block is enough
            fields.setdefault(name.strip(), value.strip())
    model = fields.get("model name", "")
    if "cpu family" in fields and "model" in fields:
        model += f" (family {fields['cpu family']} model {fields['model']})"
    return f"{os.cpu_count()} × {model.strip() or 'unknown CPU'}"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (recorded with every result)."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "redis": _version(["redis-server", "--version"]),
        "postgres": _version(["postgres", "--version"]),
        "wrk": _version(["wrk", "--version"]),
        "packages": _packages(),
        "git": _git(),
    }


def _git() -> dict[str, Any]:
    """The commit measured, and whether the app's files differed from it."""

    def run(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10
        )
        return out.stdout.strip()

    changed = run("status", "--porcelain", "--", "app", "sql", "pyproject.toml")
    return {"head": run("rev-parse", "--short", "HEAD"), "app_changes_uncommitted": changed}


def _version(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "missing"
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _packages() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("uvicorn", "starlette", "uvloop", "httptools", "redis", "hiredis", "asyncpg"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def load() -> str:
    """``uptime``'s load averages, as text."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def write_results(name: str, data: Mapping[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def repeat() -> int:
    """``BENCH_REPEAT``: how many times a point is measured (default 2)."""
    return max(1, int(os.environ.get("BENCH_REPEAT", "2")))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- throwaway servers ----------------------------------------------------------------


def scratch_dir(prefix: str) -> Path:
    """A temporary directory that PostgreSQL running as ``nobody`` can enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def redis_server(*, appendonly: bool = True, fsync: str | None = None) -> Iterator[RedisServer]:
    """A throwaway Redis with the shipped ``deploy/redis.conf`` durability and encodings.

    ``appendonly yes`` + ``appendfsync always`` like production, unless ``fsync`` (or
    ``BENCH_REDIS_FSYNC``) says otherwise.
    """
    fsync = fsync or os.environ.get("BENCH_REDIS_FSYNC", "always")
    data = scratch_dir("tally-bench-redis-")
    server = RedisServer(
        data,
        appendonly=appendonly,
        extra_args=(
            "--appendfsync",
            fsync,
            "--hash-max-listpack-entries",
            "128",
            "--hash-max-listpack-value",
            "64",
        ),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(*, durable: bool = True) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL (fsync on when ``durable``)."""
    data = scratch_dir("tally-bench-pg-")
    server = PostgresServer(data, durable=durable)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def tally_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a Tally process pointed at our servers: every other setting at
    its default (any TALLY_* of ours is dropped unless passed in ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.update(REDIS_URL=redis_url, DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def migrate(env: Mapping[str, str]) -> None:
    subprocess.run([TALLY, "migrate"], env=dict(env), check=True, capture_output=True, timeout=120)


def create_key(env: Mapping[str, str], tenant: str, scope: str = "admin") -> str:
    """``tally keys create``; the key is the last line of stdout."""
    out = subprocess.run(
        [TALLY, "keys", "create", "--tenant", tenant, "--scope", scope],
        env=dict(env),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip().splitlines()[-1]


# -- processes ------------------------------------------------------------------------


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def process(
    args: Sequence[str], env: Mapping[str, str], log_path: Path | None = None, grace: float = 20
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` (from the repo root) in its own session for the block; SIGTERM (then
    SIGKILL to its process group) at the end."""
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        list(args),
        env=dict(env),
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if log_path:
            out.close()  # type: ignore[union-attr]


def wait_http(url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200 (several times in a row: every worker is up)."""
    deadline = time.monotonic() + timeout
    good = 0
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                good = good + 1 if resp.status == 200 else 0
        except (urllib.error.URLError, OSError):
            good = 0
        if good >= 5:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def http(
    method: str, url: str, token: str, body: object | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def serve_tally(
    env: Mapping[str, str], port: int, log_path: Path, workers: int = 2
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``tally serve --workers N --no-flusher`` on 127.0.0.1:port."""
    args = [TALLY, "serve", "--host", "127.0.0.1", "--port", str(port)]
    return process([*args, "--workers", str(workers), "--no-flusher"], env, log_path)


# -- CPU accounting -------------------------------------------------------------------


Groups = Mapping[str, "list[int] | Tree"]


def server_groups(root: int) -> dict[str, list[int]]:
    """CPU groups of a server: its whole process tree (``api``), and each worker alone
    (``worker <pid>``: Tally's ``python -m app.asgi``, or a worker of the no-op app)."""
    tree = descendants(root)
    groups = {"api": tree}
    for pid in tree:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        args = cmdline.split(b"\x00")
        if b"app.asgi" in args or (b"bench.noop_app" in args and b"--one" in args):
            groups[f"worker {pid}"] = [pid]
    return groups


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def _pid_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class CpuMeter:
    """CPU use of named groups of processes between :meth:`start` and :meth:`stop`,
    as a percentage of one core (200 % = both cores of a 2-core machine), plus the whole
    machine's (``machine``) and what was neither ours nor named (``other``).

    A group is a list of pids, or ``Tree(pid)``: that process and its descendants as they
    are at :meth:`stop` (so PostgreSQL backends forked meanwhile count too). Processes that
    exit in between are not counted (their CPU is lost), so ``other`` is an upper bound.
    """

    groups: Groups
    _before: dict[int, float] = field(default_factory=dict)
    _machine: float = 0.0
    _t0: float = 0.0

    def _pids(self, group: list[int] | Tree) -> list[int]:
        return descendants(group.pid) if isinstance(group, Tree) else group

    def start(self) -> None:
        self._before = {}
        for group in self.groups.values():
            for pid in self._pids(group):
                self._before[pid] = _pid_cpu(pid) or 0.0
        self._machine = machine_busy_seconds()
        self._t0 = time.monotonic()

    def stop(self, extra: Mapping[str, float] | None = None) -> dict[str, float]:
        """Percent of one core per group; ``extra`` adds CPU seconds measured elsewhere."""
        wall = time.monotonic() - self._t0
        used: dict[str, float] = {}
        for name, group in self.groups.items():
            total = 0.0
            for pid in self._pids(group):
                now = _pid_cpu(pid)
                if now is not None:
                    total += now - self._before.get(pid, 0.0)
            used[name] = total
        used.update(extra or {})
        used["machine"] = machine_busy_seconds() - self._machine
        # Groups named "worker ..." are parts of another group and are not added again.
        ours = sum(v for k, v in used.items() if k != "machine" and not k.startswith("worker "))
        used["other"] = max(0.0, used["machine"] - ours)
        return {name: round(100 * sec / wall, 1) for name, sec in used.items()}


@dataclass(frozen=True)
class Tree:
    """A process and whatever descendants it has when measured."""

    pid: int


# -- wrk ------------------------------------------------------------------------------


def require_wrk() -> str:
    """The wrk binary, or exit with a clear message."""
    found = shutil.which("wrk")
    if found is None:
        print(
            "wrk is not installed: these benchmarks use wrk as the load generator.\n"
            "Install it (Debian/Ubuntu, as root): apt-get install -y wrk",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(2)
    return found


def wrk(
    url: str,
    script: str,
    script_args: Sequence[str],
    *,
    connections: int,
    duration: float,
    threads: int = 2,
    timeout: float = 5,
) -> dict[str, Any]:
    """Run wrk with ``bench/wrk/<script>`` and return what its ``done()`` reported.

    Every script ends with the shared ``done()`` that prints one ``BENCHJSON {...}`` line:
    requests, duration, socket errors, non-2xx/3xx count, latency percentiles (µs).
    Also measures wrk's own CPU use (its wall-clock share of the two cores matters).
    """
    binary = require_wrk()
    threads = min(threads, connections)
    args = [
        binary,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration:g}s",
        "--timeout",
        f"{timeout:g}s",
        "--latency",
        "-s",
        str(WRK_DIR / script),
        url,
        "--",
        *script_args,
    ]
    started = time.monotonic()
    before = _children_cpu()
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509
    )
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    wall = time.monotonic() - started
    # wrk's CPU comes from the rusage of the reaped child (nothing else is reaped meanwhile).
    usage = _children_cpu() - before
    found = [line for line in out.splitlines() if line.startswith("BENCHJSON ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}\n{err}")
    result: dict[str, Any] = json.loads(found[-1].removeprefix("BENCHJSON "))
    result["wrk_cpu_seconds"] = usage
    result["wrk_wall_seconds"] = wall
    result["text"] = "\n".join(
        line for line in out.splitlines() if not line.startswith("BENCHJSON ")
    )
    seconds = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / seconds if seconds else 0.0
    for key in ("p50", "p90", "p99", "p999", "mean", "max"):
        result[f"{key}_ms"] = result[f"{key}_us"] / 1000
    return result


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def port() -> int:
    return free_port()


# -- profiling (optional: py-spy is not a project dependency) ---------------------------


def pyspy_start(
    pids: Sequence[int], seconds: float, out_dir: Path, name: str
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """Start ``py-spy record`` (collapsed stacks) on each pid, or nothing if py-spy is
    missing (``pip install py-spy`` into the venv to profile)."""
    binary = shutil.which("py-spy") or (str(BIN / "py-spy") if (BIN / "py-spy").exists() else None)
    if binary is None:
        log("py-spy not found: no profile (pip install py-spy into the venv to get one)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for pid in pids:
        path = out_dir / f"{name}-{pid}.txt"
        proc = subprocess.Popen(
            [
                binary,
                "record",
                "-p",
                str(pid),
                "-d",
                f"{int(seconds)}",
                "-r",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "-o",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        started.append((proc, path))
    return started


_CATEGORIES = (
    ("app/api/middleware.py", "app: observability middleware"),
    ("prometheus_client/", "app: metrics (prometheus_client)"),
    ("structlog/", "app: logging (structlog)"),
    ("app/worker/", "app: flusher"),
    ("app/repo/", "app: repo"),
    ("app/", "app: handlers, auth, parsing, coalescer"),
    ("redis/", "redis-py client"),
    ("hiredis", "redis-py client"),
    ("asyncpg/", "asyncpg client"),
    ("uvicorn/", "uvicorn (HTTP, transport writes)"),
    ("httptools", "uvicorn (HTTP, transport writes)"),
    ("starlette/", "starlette (routing, request, response)"),
    ("anyio/", "anyio"),
    ("asyncio/", "asyncio event loop"),
    ("uvloop", "asyncio event loop"),
    ("json/", "json / orjson"),
    ("orjson", "json / orjson"),
)


def _function(frame: str) -> str:
    """``name (path:line)`` → ``name (path)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else frame


def _category(frame: str) -> str:
    where = frame.partition(" (")[2]
    for prefix, label in _CATEGORIES:
        if where.startswith(prefix) or f"/{prefix}" in where:
            return label
    return "other (stdlib, C calls)"


def pyspy_summary(started: list[tuple[subprocess.Popen[bytes], Path]], top: int = 20) -> str:
    """Wait for the py-spy runs and summarise their samples: self time by component and by
    function, and the inclusive time of Tally's own functions."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    by_category: dict[str, int] = {}
    total = 0
    for proc, path in started:
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_function(f.strip()) for f in stack.split(";") if "(" in f]
            for frame in set(frames):
                if frame.partition(" (")[2].startswith("app/"):
                    inclusive[frame] = inclusive.get(frame, 0) + count
            if frames:
                own[frames[-1]] = own.get(frames[-1], 0) + count
                label = _category(frames[-1])
                by_category[label] = by_category.get(label, 0) + count
    if not total:
        return "no samples"

    def rows(counts: dict[str, int], n: int) -> list[str]:
        ordered = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        return [f"{100 * count / total:6.1f}  {name}" for name, count in ordered]

    return "\n".join(
        [
            f"{total} samples of the workers' busy threads (py-spy, idle excluded)",
            "",
            "self %  component",
            *rows(by_category, 20),
            "",
            "self %  function",
            *rows(own, top),
            "",
            "incl %  Tally function (with what it calls)",
            *rows(inclusive, top),
        ]
    )
