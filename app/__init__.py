"""Tally: usage metering and live billing with exact, crash-safe hot/cold counting."""

__version__ = "0.1.0"
