"""The library's own worker-thread capacity, apart from the application's.

``anyio.to_thread.run_sync`` without ``limiter=`` takes a token of anyio's default limiter (40
per event loop), which the application embedding a run shares: Starlette/FastAPI run every
sync endpoint through it. With the application's tokens in use, a step's artifact commit, a
cache lookup or a journal write (which a step's success waits for) waited for a request to
end, and a cancelled run's last journal write too; the other way round, a big run's artifact
I/O took the application's tokens. So the library's thread work has limiters of its own:

* artifact and cache I/O (input fetches, output commits, cache keys/reads/writes): one
  limiter per event loop, of anyio's default size, shared by the runs of that loop, so that
  many concurrent runs do not multiply the threads they use;
* the journal: a limiter per run (:func:`journal_limiter`), so that a run's journal writes,
  on which its steps' success waits, never queue behind artifact I/O (of this run or
  another), nor behind other runs' journal writes (a burst may encode large outputs).

anyio's limiters belong to one event loop (the asyncio backend wakes waiters through
``asyncio.Event``, which is bound to the loop that waits on it and is not thread-safe), and a
run's code may run on several loops over a process's life (``Workflow.run`` makes a loop per
call; applications may run loops in several threads): hence one per loop, kept only as long
as the loop exists. Callers look the limiter up once (a run's shell at its start, an
attempt only when it hands artifact work to a thread), never per event.
"""

from __future__ import annotations

import asyncio
import threading
import weakref

import anyio

__all__ = ["IO_TOKENS", "JOURNAL_TOKENS", "io_limiter", "journal_limiter"]

#: concurrent artifact/cache thread calls per event loop (anyio's default limiter's size)
IO_TOKENS = 40
#: a run's journal writes: its flusher writes one burst at a time, and the last write of a
#: cancelled run gets a token of its own so that it never waits for one (the journal's write
#: lock orders it behind a flusher write the cancellation abandoned)
JOURNAL_TOKENS = 2

_io: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)
_io_lock = threading.Lock()  # loops in several threads may make theirs at once


def io_limiter() -> anyio.CapacityLimiter:
    """The running event loop's limiter for the library's artifact and cache I/O."""
    loop = asyncio.get_running_loop()
    limiter = _io.get(loop)
    if limiter is None:
        with _io_lock:
            limiter = _io.get(loop)
            if limiter is None:
                limiter = _io[loop] = anyio.CapacityLimiter(IO_TOKENS)
    return limiter


def journal_limiter() -> anyio.CapacityLimiter:
    """A new limiter for one run's journal writes (call it in the run's event loop)."""
    return anyio.CapacityLimiter(JOURNAL_TOKENS)
