"""Garbage-collector tuning while runs are in progress.

A run keeps tens of thousands of small long-lived objects (compiled steps, records) and churns
through many short-lived ones; CPython's default thresholds then rescan the long-lived heap
again and again (measured: a third of the per-step cost on 10,000 no-op steps). While any run
is active, the heap that existed before it is frozen out of collection and the young
generation is allowed to grow larger; both are restored when the last run ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["tuned_gc"]

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] | None = None

_GEN0 = 20_000


@contextmanager
def tuned_gc() -> Iterator[None]:
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_GEN0, _saved[0]), _saved[1], _saved[2])
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                gc.unfreeze()
                _saved = None
