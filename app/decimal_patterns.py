"""Regular expressions that state, in the OpenAPI document, which decimal strings a handler takes.

A JSON Schema has no decimal arithmetic for strings, so every rule the handlers apply to a
decimal string (sign, bound, zero, digits after the point) is spelled out as a pattern here.
The patterns are ECMA-262 as JSON Schema wants, with ASCII digit ranges and no look-around,
so every engine reads them alike (jsonschema-rs's two, and Python's ``re``, from which
Schemathesis draws strings). ``tests/unit/test_openapi_patterns.py`` checks each one against
the parser it describes.
"""

from __future__ import annotations

__all__ = ["decimal_pattern"]


def decimal_pattern(
    *,
    below: int,
    places: int | None,
    inclusive: bool = False,
    positive: bool = False,
    trailing_zeros_free: bool = True,
) -> str:
    """The plain decimal strings ("12.5", "007", "0.10"; no sign, exponent or spaces) with:

    - a value below ``10**below``, or up to and including it when ``inclusive``;
    - a value > 0 when ``positive``, else >= 0;
    - at most ``places`` digits after the point (``None``: any number). With
      ``trailing_zeros_free`` zeros at the end of the fraction do not count ("1.50000000" has
      one place, as app.plans reads it); without, every written digit counts (app.quantities).
    """
    if below < 1 or (places is not None and places < 1):
        raise ValueError("below and places must be at least 1")
    tail = "0*" if trailing_zeros_free else ""
    if places is None:
        fraction = r"\.[0-9]+"
        zeros = r"\.0+"
        # Zeros, then a nonzero digit, then anything.
        nonzero = r"\.0*[1-9][0-9]*"
    else:
        fraction = rf"\.{_digits(1, places)}{tail}"
        zeros = r"\.0+" if trailing_zeros_free else rf"\.0{{1,{places}}}"
        if trailing_zeros_free:
            # The last nonzero digit within the first `places`, then only zeros.
            nonzero = rf"\.{_digits(0, places - 1)}[1-9]0*"
        else:
            # A nonzero digit and at most `places` digits in all: one branch per count of
            # leading zeros, as without look-ahead the length cannot be bounded otherwise.
            branches = (
                "0" * zeros_first + "[1-9]" + _digits(0, places - 1 - zeros_first)
                for zeros_first in range(places)
            )
            nonzero = rf"\.(?:{'|'.join(branches)})"
    alternatives = [f"[1-9]{_digits(0, below - 1)}(?:{fraction})?"]
    if inclusive:
        alternatives.append(f"1{'0' * below}(?:{zeros})?")
    alternatives.append(f"0{nonzero}" if positive else f"0(?:{fraction})?")
    # Leading zeros are free ("007" is 7): Decimal() reads them so.
    return f"^0*(?:{'|'.join(alternatives)})$"


def _digits(least: int, most: int) -> str:
    """A run of ``least`` to ``most`` ASCII digits, written as plainly as possible."""
    if most == 0:
        return ""
    if least == most:
        return "[0-9]" if most == 1 else f"[0-9]{{{most}}}"
    if (least, most) == (0, 1):
        return "[0-9]?"
    return f"[0-9]{{{least},{most}}}"
