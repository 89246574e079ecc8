"""freeze_startup_heap: garbage of start-up is collected, the rest leaves the collector."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from app.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_survivors_are_frozen_and_start_up_garbage_is_collected_first() -> None:
    kept = _Node()
    kept.other = kept  # a cycle still referenced: must survive, frozen
    garbage = _Node()
    garbage.other = garbage  # a cycle no longer referenced: must be collected, not frozen
    dead = weakref.ref(garbage)
    del garbage
    assert gc.get_freeze_count() == 0

    freeze_startup_heap()

    assert dead() is None
    assert gc.get_freeze_count() > 0
    # A full collection no longer looks at the frozen objects: it finds almost nothing.
    assert len(gc.get_objects(generation=2)) < gc.get_freeze_count() // 10
    assert kept.other is kept
