"""Signal handling shared by the long-running commands."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator, Sequence
from types import FrameType


@contextlib.contextmanager
def exit_quietly_on_signals(
    signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[list[int]]:
    """Make ``signals`` (SIGINT, SIGTERM) record themselves instead of killing the process.

    uvicorn re-raises the signal that stopped it once it has shut down gracefully; with these
    handlers in place that re-raise is recorded, so the command can stop its embedded
    servers and exit 0. The previous handlers are restored on the way out.
    """
    received: list[int] = []

    def record(sig: int, frame: FrameType | None) -> None:
        received.append(sig)

    previous = {sig: signal.signal(sig, record) for sig in signals}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
