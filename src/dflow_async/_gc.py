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
  collection: most of the gain remains). If the application calls ``gc.freeze()`` while a
  run is active (the frozen count grew: only ``gc.freeze()`` adds to it), it asked for the
  whole heap to be frozen, the part the run froze included: it stays frozen.
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
_frozen: int | None = None  # objects frozen right after the runs froze them (None: did not)

_GEN0 = 20_000


@contextmanager
def tuned_gc() -> Iterator[None]:
    """Every run (``run``/``arun``) is in one of these."""
    global _active, _saved, _tuned, _frozen
    with _lock:
        if _active == 0:
            _saved = saved = gc.get_threshold()
            if gc.get_freeze_count() == 0:  # else the application froze its heap: leave it
                gc.freeze()
                _frozen = gc.get_freeze_count()
            else:
                _frozen = None
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
                # frozen objects only leave the count (freed, or an unfreeze) unless
                # gc.freeze() is called again: then the application froze everything
                if _frozen is not None and gc.get_freeze_count() <= _frozen:
                    gc.unfreeze()
                _saved = _tuned = _frozen = None
