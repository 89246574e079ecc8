"""Identifiers: customer ids, resource types, plan ids and tenant names.

1–128 characters from ASCII letters, digits and ``. _ - : @ +``, starting with a letter or
digit, case-sensitive. Nothing else reaches Redis keys or SQL rows.
"""

from __future__ import annotations

import re

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,127}")


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string the contract accepts as an identifier."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid identifier, or None when it is."""
    if not isinstance(value, str):
        return "must be a string"
    if not 1 <= len(value) <= 128:
        return "must be 1 to 128 characters long"
    if _ID.fullmatch(value) is None:
        return (
            "may contain only ASCII letters, digits and . _ - : @ + "
            "and must start with a letter or digit"
        )
    return None
