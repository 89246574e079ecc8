"""Idempotency memory: Redis bytes per remembered idempotency key, and how to size Redis.

Method (our own throwaway Redis, AOF off so no rewrite buffer blurs ``used_memory``, the
shipped ``hash-max-listpack-*`` settings): ``INFO memory`` ``used_memory`` before and after
sending ``BENCH_MEMORY_KEYS`` events (default 1,000,000) through
:func:`app.hotpath.ingest.apply_events` in batches of 1,000, each with a unique
idempotency key. Events go to 10 customers × 1 resource type × the current hour, so the
meters themselves are 10 hash fields; a control run with the same events and no keys
measures them (and anything else the ingest leaves), and is subtracted.

Runs:
* ``control``: no keys;
* ``keys``: unique keys, the default ``TALLY_IDEMPOTENCY_FANOUT`` (16,384 slot hashes);
  1M keys make ~61 per slot, so every slot hash is a compact listpack;
* ``sized``: the same keys with the fanout the README's rule asks for (keys / 100, so ~100
  keys per slot hash, still listpack): the number to size a correctly configured Redis with;
* ``dense``: the same keys with 64 slot hashes (~15,600 keys per hash, hashtable
  encoding): the density the default fanout reaches in production (5,000 events/s for a
  24 h window is ~26,000 keys per slot hash), what an unchanged default fanout costs;
* ``plain SET``: the naive layout for comparison, ``SET t:{tenant}:idem:<key> <8-byte
  fingerprint> EX 86400`` per key (200,000 keys).

Run: ``python -m bench.memory``; writes ``bench/results/memory.json``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from typing import Any

import redis
import redis.asyncio as aioredis

from app.hotpath.events import Event
from app.hotpath.ingest import IdempotencyConfig, Outcome, apply_events
from app.scripts import Scripts
from app.settings import Settings
from bench import _common as c

TENANT = "mem"
BATCH = 1000
TARGET_BYTES = 64
EXAMPLE_RATE, EXAMPLE_TTL = 5000, 86_400


def _keys() -> int:
    return int(os.environ.get("BENCH_MEMORY_KEYS", "1000000"))


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _reset(client: redis.Redis) -> int:
    client.flushall()
    time.sleep(0.3)
    return _used(client)


async def _send(url: str, count: int, config: IdempotencyConfig, keys: bool) -> None:
    client = aioredis.Redis.from_url(url)
    scripts = Scripts.register(client)
    nonce = secrets.token_hex(4)
    now = time.time_ns()
    sem = asyncio.Semaphore(4)

    async def batch(start: int) -> None:
        events = [
            Event(
                f"cust-{i % 10}",
                "api_call",
                1_000_000,
                now,
                False,
                f"evt_{nonce}_{i:012d}" if keys else None,
            )
            for i in range(start, min(count, start + BATCH))
        ]
        async with sem:
            outcomes = await apply_events(scripts, TENANT, events, config, now)
        assert all(o is Outcome.ACCEPTED for o in outcomes)

    await asyncio.gather(*(batch(s) for s in range(0, count, BATCH)))
    await client.aclose()


def _slot_hashes(client: redis.Redis) -> dict[str, Any]:
    sizes: list[int] = []
    encodings: Counter[str] = Counter()
    for key in client.scan_iter(match=f"t:{{{TENANT}}}:idem:*", count=1000):
        sizes.append(client.hlen(key))
        encodings[client.object("encoding", key).decode()] += 1
    return {
        "hashes": len(sizes),
        "keys_per_hash_mean": round(sum(sizes) / len(sizes), 1) if sizes else 0,
        "keys_per_hash_max": max(sizes) if sizes else 0,
        "encodings": dict(encodings),
    }


def _run(
    client: redis.Redis, url: str, label: str, count: int, config: IdempotencyConfig | None
) -> dict[str, Any]:
    before = _reset(client)
    t0 = time.monotonic()
    asyncio.run(_send(url, count, config or IdempotencyConfig(86_400, 16_384), config is not None))
    seconds = time.monotonic() - t0
    after = _used(client)
    result = {
        "label": label,
        "events": count,
        "fanout": config.fanout if config else None,
        "used_memory_before": before,
        "used_memory_after": after,
        "delta_bytes": after - before,
        "seconds": round(seconds, 1),
        "slot_hashes": _slot_hashes(client) if config else None,
    }
    c.log(f"{label:<8} {count:,} events: +{after - before:,} bytes in {seconds:.1f} s")
    return result


def _plain_set(client: redis.Redis, count: int) -> dict[str, Any]:
    before = _reset(client)
    nonce = secrets.token_hex(4)
    fingerprint = secrets.token_bytes(8)
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(count, start + 5000)):
            pipe.set(f"t:{{{TENANT}}}:idem:evt_{nonce}_{i:012d}", fingerprint, ex=86_400)
        pipe.execute()
    after = _used(client)
    c.log(f"plain SET {count:,} keys: +{after - before:,} bytes")
    return {
        "keys": count,
        "key_example": f"t:{{{TENANT}}}:idem:evt_{nonce}_{0:012d}",
        "delta_bytes": after - before,
        "bytes_per_key": (after - before) / count,
    }


def sizing_rule(bytes_per_key: float, rate: float = EXAMPLE_RATE, ttl: int = EXAMPLE_TTL) -> str:
    """The sizing rule, explained, with the example worked out."""
    keys = rate * ttl * 1.5
    return (
        "Redis memory for idempotency ≈ bytes/key × keys/s × TTL × 1.5.\n"
        "Why 1.5: a key is written into the slot hash of the current time window (one TTL\n"
        "long), and a window's hashes expire together one TTL after the window ends. A key\n"
        "written at the start of a window lives ~2 TTL, one written at its end ~1 TTL: 1.5 TTL\n"
        "on average, so on average 1.5 × TTL × rate keys are held. Just before a window's\n"
        "hashes expire, two full windows are held (2 × TTL × rate keys): size maxmemory\n"
        "for that peak.\n"
        f"Example: {rate:,} events/s × {ttl:,} s × 1.5 = {keys / 1e6:,.0f} M keys × "
        f"{bytes_per_key:.1f} B = {keys * bytes_per_key / 1e9:,.1f} GB on average "
        f"({keys * bytes_per_key / 2**30:,.1f} GiB), "
        f"{keys / 1.5 * 2 * bytes_per_key / 1e9:,.1f} GB at the peak."
    )


def main() -> dict[str, Any]:
    """Run the four measurements; print the table and the sizing rule."""
    count = _keys()
    settings = Settings.from_env(
        {k: v for k, v in os.environ.items() if k.startswith("TALLY_")}, require_urls=False
    )
    config = IdempotencyConfig(settings.idempotency_ttl, settings.idempotency_fanout)
    c.log(f"bench.memory: {count:,} keys, {config}; {c.cpu()}; load {c.load()}")
    with c.redis_server(appendonly=False) as server:
        client = redis.Redis.from_url(server.url)
        control = _run(client, server.url, "control", count, None)
        keyed = _run(client, server.url, "keys", count, config)
        sized = _run(
            client, server.url, "sized", count, IdempotencyConfig(config.ttl, max(1, count // 100))
        )
        dense = _run(client, server.url, "dense", count, IdempotencyConfig(config.ttl, 64))
        plain = _plain_set(client, min(count, 200_000))
        client.close()
    for run in (keyed, sized, dense):
        run["bytes_per_key"] = (run["delta_bytes"] - control["delta_bytes"]) / count
    results = {
        "benchmark": "memory",
        "machine": c.machine(),
        "config": {"ttl": config.ttl, "fanout": config.fanout},
        "control": control,
        "keys": keyed,
        "sized": sized,
        "dense": dense,
        "plain_set": plain,
        "target_bytes_per_key": TARGET_BYTES,
        "met": keyed["bytes_per_key"] <= TARGET_BYTES,
        "met_sized": sized["bytes_per_key"] <= TARGET_BYTES,
        "met_dense": dense["bytes_per_key"] <= TARGET_BYTES,
        "sizing_rule": sizing_rule(sized["bytes_per_key"]),
        "sizing_rule_default_fanout_at_example_rate": sizing_rule(dense["bytes_per_key"]),
    }
    path = c.write_results("memory", results)
    rows = [
        ["control (no keys)", f"{count:,}", "", f"{control['delta_bytes']:,}", "", "", ""],
    ]
    for run in (keyed, sized, dense):
        hashes = run["slot_hashes"]
        rows.append(
            [
                f"{run['label']} (fanout {run['fanout']:,})",
                f"{count:,}",
                f"{hashes['keys_per_hash_mean']:,} ("
                + ", ".join(f"{n:,} {enc}" for enc, n in sorted(hashes["encodings"].items()))
                + ")",
                f"{run['delta_bytes']:,}",
                f"{run['bytes_per_key']:.1f}",
                f"≤ {TARGET_BYTES}",
                "met" if run["bytes_per_key"] <= TARGET_BYTES else "MISSED",
            ]
        )
    rows.append(
        [
            "plain SET ... EX",
            f"{plain['keys']:,}",
            "",
            f"{plain['delta_bytes']:,}",
            f"{plain['bytes_per_key']:.1f}",
            "",
            "",
        ]
    )
    print(
        c.table(
            ["run", "keys", "keys/hash (encoding)", "Δ used_memory", "B/key", "target", ""],
            rows,
        )
    )
    print(sizing_rule(sized["bytes_per_key"]))
    fanout = EXAMPLE_RATE * EXAMPLE_TTL // 100
    print(
        f"That needs TALLY_IDEMPOTENCY_FANOUT ≥ {EXAMPLE_RATE:,} × {EXAMPLE_TTL:,} / 100 = "
        f"{fanout:,}. With the default {config.fanout:,} the slot hashes of that example\n"
        f"hold {EXAMPLE_RATE * EXAMPLE_TTL // config.fanout:,} keys each (hashtable encoding, "
        f"{dense['bytes_per_key']:.1f} B/key, the 'dense' run):"
    )
    print(sizing_rule(dense["bytes_per_key"]).rsplit("\n", 1)[1])
    print(f"results: {path}", flush=True)
    return results


if __name__ == "__main__":
    main()
