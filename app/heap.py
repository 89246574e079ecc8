"""The garbage collector of a serving process: no full collections over the startup heap.

CPython's oldest-generation collection walks every tracked object. A worker's heap after
imports and start-up (modules, classes, functions, the app, the pools) is some 60,000
objects, and walking it took 20–30 ms on the benchmark machine: each such pause stalled
every request in flight, and was most of the bill's and ingest's p99 under load. Nothing
of that heap ever becomes garbage, so it is moved out of the collector's sight once the
process has started (``gc.freeze``, as CPython's docs advise for long-lived servers).
Objects made later are collected as usual.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then exempt every surviving object from all
    future collections (call once, when the process is ready to serve)."""
    gc.collect()
    gc.freeze()
