"""What the access log costs the hot path: single-event ingest with TALLY_ACCESS_LOG
``errors`` (the default: only status >= 400 is logged), ``all`` and ``off``, same server
settings as bench/ingest.py, 64 connections, interleaved runs."""

from __future__ import annotations

import secrets
from typing import Any

from bench import _common as c

MODES = ("errors", "all", "off")


def main() -> None:
    """Measure and print events/s, p50 and p99 per access-log mode."""
    c.require_wrk()
    duration = float(c.repeat() and 10)
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with c.redis_server() as redis, c.postgres_server() as postgres:
        base = c.tally_env(redis.url, postgres.url)
        c.migrate(base)
        key = c.create_key(base, "bench")
        for _ in range(c.repeat()):
            for mode in MODES:
                env = {**base, "TALLY_ACCESS_LOG": mode}
                port = c.port()
                log_path = c.scratch_dir("tally-bench-acclog-") / "serve.log"
                with c.serve_tally(env, port, log_path):
                    url = f"http://127.0.0.1:{port}"
                    c.wait_http(f"{url}/ready")
                    args = [key, "1000", secrets.token_hex(4)]
                    c.wrk(url, "single.lua", args, connections=64, duration=2)  # warm up
                    results[mode].append(
                        c.wrk(url, "single.lua", args, connections=64, duration=duration)
                    )
    rows = []
    for mode in MODES:
        best = max(results[mode], key=lambda r: r["requests"] / r["duration_us"])
        rows.append(
            [
                mode,
                round(best["requests"] / best["duration_us"] * 1e6),
                best["p50_us"] / 1000,
                best["p99_us"] / 1000,
                best["non_2xx_3xx"],
            ]
        )
    print(c.table(["TALLY_ACCESS_LOG", "events/s", "p50 ms", "p99 ms", "non-2xx"], rows))
    c.write_results("access_log", {"machine": c.machine(), "load": c.load(), "runs": results})


if __name__ == "__main__":
    main()
