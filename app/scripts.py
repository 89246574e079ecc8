"""Lua scripts: read once from ``app/lua/*.lua``, registered once per client.

redis-py's script objects call EVALSHA and, on NOSCRIPT (a restarted Redis has an empty
script cache), load the script and retry, so a Redis restart needs nothing from us.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

NAMES = ("ingest", "drain", "ack", "read", "seed")


@functools.cache
def source(name: str) -> str:
    """The text of ``app/lua/<name>.lua``."""
    return resources.files("app").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def without_shebang(text: str) -> str:
    """The script without its ``#!lua`` line (for fakeredis, which cannot parse flags)."""
    return text.split("\n", 1)[1] if text.startswith("#!") else text


@dataclass(frozen=True)
class Scripts:
    """The registered scripts of one client."""

    ingest: AsyncScript
    drain: AsyncScript
    ack: AsyncScript
    read: AsyncScript
    seed: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis, *, shebang: bool = True) -> Scripts:
        """Register every script on ``client`` (no round trip until first use)."""
        loaded: dict[str, Any] = {}
        for name in NAMES:
            text = source(name)
            loaded[name] = client.register_script(text if shebang else without_shebang(text))
        return cls(**loaded)
