"""Free text that is stored (names, emails, descriptions): valid Unicode, no NUL.

JSON allows ``\\u0000`` and lone surrogate escapes; PostgreSQL stores neither (text and
jsonb refuse NUL, UTF-8 cannot encode a surrogate), so such text is a 422, not a 500.
"""

from __future__ import annotations

import re

# What an email address may not contain, as the body of a regex character class: every
# character Python's str.isspace() or ECMA-262's \s calls whitespace (the two differ on
# U+001C-U+001F, U+0085 and U+FEFF), and NUL. The handler and the OpenAPI pattern both use
# this one list, so they cannot disagree on any character.
EMAIL_FORBIDDEN = (
    r"\u0000\t-\r\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_EMAIL = re.compile(f"[^{EMAIL_FORBIDDEN}]*@[^{EMAIL_FORBIDDEN}]*")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored, or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def is_email(value: str) -> bool:
    """Whether ``value`` is an address as the API takes it: an "@" and no whitespace or NUL."""
    return _EMAIL.fullmatch(value) is not None
