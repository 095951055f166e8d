"""Peak RSS growth of a block of code, sampled from a background thread.

``ru_maxrss`` alone cannot isolate one block (it is the whole process's lifetime peak, and
imports may already have set it), so a thread polls the current RSS. The block runs in a
fresh subprocess (see bench_core.py) so earlier measurements leave no garbage behind.
"""

from __future__ import annotations

import threading

import psutil

MIB = 1024 * 1024


class PeakRSS:
    """``with PeakRSS() as p: ...`` then ``p.growth_mib`` = peak RSS minus RSS at entry.

    Polling every 10 ms is plenty for multi-second runs and keeps the sampler from fighting
    the measured code for the GIL.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.start = self.peak = 0

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / MIB
