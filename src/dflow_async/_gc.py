"""Garbage-collector tuning while runs are in progress.

A run keeps tens of thousands of small long-lived objects (compiled steps, records) and churns
through many short-lived ones; CPython's default thresholds then rescan the long-lived heap
again and again (measured: a third of the per-step cost on 10,000 no-op steps). While any run
is active, the heap that existed before it is frozen out of collection and the young
generation is allowed to grow larger; both are undone when the last run ends.

The process is the application's, so only what the runs did is undone:

* An application that froze its heap itself (``gc.freeze()``: a preforking server's
  copy-on-write pages) keeps it frozen: there is no unfreezing part of the permanent
  generation, so a run then freezes nothing (the application's frozen heap is already out of
  collection: most of the gain remains). (An application that calls ``gc.freeze()`` while a
  run is active finds its heap unfrozen when the last run ends: telling would take
  ``gc.get_freeze_count()``, which walks every frozen object, milliseconds per run.)
* The thresholds are restored only if they are still the ones the runs set: values the
  application set meanwhile are its own. A first threshold of 0 (automatic collection
  turned off) stays 0.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["tuned_gc"]

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] | None = None  # the thresholds before the first run
_tuned: tuple[int, int, int] | None = None  # the thresholds the runs set
_frozen = False  # the runs froze the heap (the application had frozen nothing)

_GEN0 = 20_000


@contextmanager
def tuned_gc() -> Iterator[None]:
    """Every run (``run``/``arun``) is in one of these."""
    global _active, _saved, _tuned, _frozen
    with _lock:
        if _active == 0:
            _saved = saved = gc.get_threshold()
            # (get_freeze_count() walks the frozen objects: asked only while there are none)
            _frozen = gc.get_freeze_count() == 0  # else the application froze its heap
            if _frozen:
                gc.freeze()
            _tuned = (max(_GEN0, saved[0]) if saved[0] else 0, saved[1], saved[2])
            gc.set_threshold(*_tuned)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                if gc.get_threshold() == _tuned:
                    gc.set_threshold(*_saved)
                if _frozen:
                    gc.unfreeze()
                _saved = _tuned = None
                _frozen = False
