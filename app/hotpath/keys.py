"""Every Redis key name Tally uses, built here and nowhere else.

Layout: all of a tenant's keys share the hash tag ``{<tenant>}``, so every script (ingest,
drain, ack, read) touches one slot and a Redis Cluster spreads tenants across nodes.
Tenant-wide idempotency (one key, any customer) and the per-hour bound need one atomic
view of the tenant, which is why the tag is the tenant and not a finer shard. Within a
tenant, customers are spread over ``SHARDS`` flush shards, each drained independently.

Injectivity: identifiers are validated to ``[A-Za-z0-9._:@+-]``, so ``{``, ``}`` and ``|``
never occur in them. The tenant sits alone inside ``{...}``; a customer id is always the
whole remainder after a fixed prefix; hash fields are ``<resource_type>|<hour>``.
No two distinct (tenant, customer, resource type, hour) share a key and field.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

SHARDS = 8
HEARTBEAT = "tally:flusher:heartbeat"
HALTED = "tally:flusher:halted"


def as_text(value: bytes | str) -> str:
    """A Redis reply item as text (the client returns bytes; typing says bytes | str)."""
    return value.decode() if isinstance(value, bytes) else value


def shard_of(customer_id: str) -> int:
    """The flush shard of a customer (stable across processes and releases)."""
    return zlib.crc32(customer_id.encode()) % SHARDS


def meter_field(resource_type: str, hour: int) -> str:
    """Hash field of a (resource type, hour) in a customer's meter."""
    return f"{resource_type}|{hour}"


def split_field(field: str) -> tuple[str, int]:
    """Inverse of :func:`meter_field`."""
    resource_type, hour = field.rsplit("|", 1)
    return resource_type, int(hour)


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """Key names of one tenant."""

    tenant: str

    @property
    def prefix(self) -> str:
        return "t:{" + self.tenant + "}:"

    @property
    def hot_prefix(self) -> str:
        return self.prefix + "hot:"

    @property
    def pending_prefix(self) -> str:
        return self.prefix + "pend:"

    def hot(self, customer_id: str) -> str:
        """Hash: field ``resource|hour`` → unflushed micro-units of the customer."""
        return self.hot_prefix + customer_id

    def pending(self, customer_id: str) -> str:
        """Hash: the customer's fields drained by the shard's in-flight flush."""
        return self.pending_prefix + customer_id

    def totals(self, customer_id: str, month: int) -> str:
        """Hash: the customer's units ever accepted in a month (months since 1970-01), per
        resource type (field ``resource``) and per seeded hour (``resource|hour``); the
        per-hour bound is checked against it (``app/lua/ingest.lua``)."""
        return f"{self.prefix}tot:{month}:{customer_id}"

    def dirty(self, shard: int) -> str:
        """Set of customers of the shard with hot data."""
        return f"{self.prefix}s{shard}:dirty"

    def pending_customers(self, shard: int) -> str:
        """Set of customers in the shard's in-flight flush."""
        return f"{self.prefix}s{shard}:pcust"

    def meta(self, shard: int) -> str:
        """Hash of the in-flight flush: seq, flush_id, fields, drained_ms, oldest_ms."""
        return f"{self.prefix}s{shard}:meta"

    def seq(self, shard: int) -> str:
        """Counter: the shard's last flush sequence number."""
        return f"{self.prefix}s{shard}:seq"

    def first(self, shard: int) -> str:
        """When (ms) the oldest undrained write of the shard happened."""
        return f"{self.prefix}s{shard}:first"

    def lease(self, shard: int) -> str:
        """Which flusher works on the shard now (an optimisation, not a lock)."""
        return f"{self.prefix}s{shard}:lease"

    def idempotency_count(self, window: int) -> str:
        """Counter: keys remembered in a window (approximate, for the metrics gauge)."""
        return f"{self.prefix}idemcount:{window}"

    def idempotency(self, window: int, slot: int) -> str:
        """Hash: 8-byte key hash → 8-byte event fingerprint, for one time window."""
        return f"{self.prefix}idem:{window}:{slot}"


@dataclass(frozen=True, slots=True)
class IdempotencySlot:
    """Where an idempotency key is remembered: a slot hash and an 8-byte field in it."""

    slot: int
    field: bytes


def idempotency_slot(key: str, fanout: int) -> IdempotencySlot:
    """Hash the (tenant-scoped by the key's tag) idempotency key to its slot and field."""
    digest = hashlib.sha256(key.encode()).digest()
    return IdempotencySlot(slot=int.from_bytes(digest[:4], "big") % fanout, field=digest[4:12])
