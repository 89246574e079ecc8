"""Free text that is stored (names, emails, descriptions): valid Unicode, no NUL.

JSON allows ``\\u0000`` and lone surrogate escapes; PostgreSQL stores neither (text and
jsonb refuse NUL, UTF-8 cannot encode a surrogate), so such text is a 422, not a 500.
"""

from __future__ import annotations


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored, or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None
