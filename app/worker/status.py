"""The flusher's state as others (readiness, metrics) see it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FlusherStatus:
    """Mutable status of the flusher running in this process."""

    halted: bool = False
    halt_reason: str = ""
    cycles: int = 0
    failures: int = 0
    last_cycle_at: float = 0.0

    def halt(self, reason: str) -> None:
        """Mark the flusher halted (it refuses to flush until an operator acts)."""
        self.halted = True
        self.halt_reason = reason
