"""Everything a Redis holds, to prove a request changed nothing."""

from __future__ import annotations

import redis.asyncio as aioredis


async def snapshot(redis: aioredis.Redis) -> dict[bytes | str, object]:
    """Every key and its content (hashes, sets, strings): to prove nothing changed."""
    out: dict[bytes | str, object] = {}
    for key in await redis.keys("*"):
        kind = await redis.type(key)
        if kind == b"hash":
            out[key] = await redis.hgetall(key)
        elif kind == b"set":
            out[key] = await redis.smembers(key)
        else:
            out[key] = await redis.get(key)
    return out
