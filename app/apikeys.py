"""API key text: generation, parsing, hashing. Keys are never stored, only their SHA-256.

A key reads ``tly_<key_id>_<secret>``: the key id (48 bits, public, shown in listings and
logs) finds the row; the secret is 256 bits from :mod:`secrets`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

_KEY = re.compile(r"tly_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class Scope(StrEnum):
    """What a key may do."""

    ADMIN = "admin"
    INGEST = "ingest"
    READ = "read"


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: ``text`` is shown once, ``secret_hash`` is stored."""

    key_id: str
    text: str
    secret_hash: bytes


def generate() -> NewKey:
    """A new random key."""
    key_id = secrets.token_hex(6)
    text = f"tly_{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id=key_id, text=text, secret_hash=hash_key(text))


def hash_key(text: str) -> bytes:
    """SHA-256 of the whole key text."""
    return hashlib.sha256(text.encode("ascii")).digest()


def key_id_of(text: str) -> str | None:
    """The key id of a well-formed key, or None."""
    match = _KEY.fullmatch(text)
    return match[1] if match else None


def matches(text: str, stored_hash: bytes) -> bool:
    """Constant-time comparison of ``text``'s hash with the stored one."""
    return hmac.compare_digest(hash_key(text), stored_hash)
