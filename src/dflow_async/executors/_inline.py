"""The in-process executor: ``async def`` OPs run in the event loop, plain OPs on threads.

Plain OPs go to a small pool of worker threads through one queue. A per-step ``to_thread``
hand-off would cost more than a tiny OP itself, so the scheduler's fast lane
(:meth:`InlineExecutor.start_nowait`) gets each outcome *in the worker thread*: the thread
advances the run there and goes straight on to the steps that became ready. Outcomes awaited
through futures (``run``/``submit``: timeouts, caching) come back in batches instead: one loop
wake-up carries every outcome that finished meanwhile, and while such attempts are out the
loop also collects finished outcomes every few milliseconds by itself, so an outcome never
waits for the thread that produced it to finish its next (perhaps long) attempt.

Each worker thread owns its current directory (``unshare(CLONE_FS)`` on Linux), so OPs that
write relative paths land in their own work directory, as they would in a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from dflow_async._spec import AttemptOutcome, AttemptSpec, Failed
from dflow_async._worker import arun_attempt, run_attempt, thread_owns_cwd
from dflow_async.executors._base import AttemptHandle, Executor

__all__ = ["InlineExecutor"]

#: the scheduler's callback for a fast-lane attempt, called as ``done(token, outcome)``; it
#: returns the attempts to run next, as ``(spec, done, token)`` items like the ones it was given
Continuation = Callable[[Any, AttemptOutcome], "list[tuple[AttemptSpec, Any, Any]]"]

_STOP = object()
_BATCH = 256  # outcomes delivered per loop wake-up while work keeps coming
_GROW_AFTER = 0.1  # seconds every busy thread must be stuck before another one starts
_COLLECT_EVERY = 0.005  # seconds between the loop's own collections of finished outcomes


class InlineExecutor(Executor):
    """Runs attempts in this process. ``max_workers`` threads serve plain (sync) OPs.

    A timed-out or cancelled sync OP cannot be killed (Python threads cannot be): its outcome
    is reported at once and the thread finishes the call in the background. Use the
    ``process`` executor for OPs that may hang.
    """

    name = "inline"
    in_process = True

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._done: list[tuple[Any, AttemptOutcome]] = []
        self._wake_pending = False
        self._grow_pending = False
        self._started: dict[int, float] = {}  # thread -> when its current attempt began
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = 0  # attempts queued or running whose outcome is not delivered yet
        self._collect_pending = False
        # submitted futures -> set once a thread picks the attempt up (see started())
        self._begun: dict[asyncio.Future[AttemptOutcome], asyncio.Event] = {}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        threads, self._threads = self._threads, []
        # threads may still be inside a hung OP; do not block the loop waiting for them
        for t in threads:
            t.join(timeout=0)

    # --------------------------------------------------------------- fast path

    async def run(self, spec: AttemptSpec) -> AttemptOutcome:
        self._ensure_open()
        if _is_async(spec.op):
            return await arun_attempt(spec)
        future: asyncio.Future[AttemptOutcome] = self._enqueue(spec)
        try:
            return await future
        except asyncio.CancelledError:
            future.cancel()
            raise

    def start_nowait(self, items: Sequence[tuple[AttemptSpec, Continuation, Any]]) -> None:
        """The scheduler's fast lane for plain OPs (it checks that once per step, not here
        per attempt): no task and no future per attempt. Each item is ``(spec, done, token)``;
        ``done(token, outcome)`` is called *in the worker thread* that ran the attempt and
        returns the attempts to run next, as items again, which this thread (or another idle
        one) takes next without a trip through the event loop. A batch per call: a wide graph
        hands over thousands of attempts at once."""
        if self._state != "open":
            self._ensure_open()
        put = self._queue.put
        for item in items:
            put(item)
        if not self._threads:
            self._spawn()
        # more attempts than idle threads (a first thread included: a batch may hold two long
        # OPs): watch for threads stuck in long attempts, and add one
        if not self._grow_pending and self._queue.qsize() > self._idle:
            self._grow_pending = True
            assert self._loop is not None
            self._loop.call_later(_GROW_AFTER, self._maybe_grow)

    # --------------------------------------------------------------- interface

    async def submit(self, spec: AttemptSpec) -> AttemptHandle:
        self._ensure_open()
        if _is_async(spec.op):
            task = asyncio.ensure_future(arun_attempt(spec))
            return AttemptHandle(spec, task)
        assert self._loop is not None
        future: asyncio.Future[AttemptOutcome] = self._loop.create_future()
        self._begun[future] = asyncio.Event()
        return AttemptHandle(spec, self._enqueue(spec, future))

    async def started(self, handle: AttemptHandle) -> None:
        begun = self._begun.get(handle.token)
        if begun is not None:  # a plain OP, maybe still queued for a free thread
            future: asyncio.Future[AttemptOutcome] = handle.token
            future.add_done_callback(lambda _: begun.set())
            await begun.wait()

    async def wait(self, handle: AttemptHandle) -> AttemptOutcome:
        future: asyncio.Future[AttemptOutcome] = handle.token
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled():
                return Failed(kind="cancelled", error="the attempt was cancelled")
            raise

    def can_stop(self, spec: AttemptSpec) -> bool:
        # an async OP's task is cancelled; a thread running a plain OP cannot be stopped
        return _is_async(spec.op)

    async def cancel(self, handle: AttemptHandle) -> None:
        future: asyncio.Future[AttemptOutcome] = handle.token
        if not future.done():
            future.cancel()

    # --------------------------------------------------------------- threads

    def _enqueue(self, spec: AttemptSpec, future: Any = None) -> Any:
        """Queue an attempt whose outcome goes to ``future`` (a new one if None), delivered
        on the loop."""
        assert self._loop is not None
        if future is None:
            future = self._loop.create_future()
        self._queue.put((spec, future, None))
        self._out += 1
        if not self._collect_pending:
            self._collect_pending = True
            self._loop.call_later(_COLLECT_EVERY, self._collect)
        if not self._threads:
            self._spawn()
        elif not self._grow_pending and self._queue.qsize() > self._idle:
            self._grow_pending = True
            self._loop.call_later(_GROW_AFTER, self._maybe_grow)
        return future

    def _watch_growth(self) -> None:
        assert self._loop is not None
        self._loop.call_later(_GROW_AFTER, self._maybe_grow)

    def _maybe_grow(self) -> None:
        """Add a thread only when every thread is stuck in a long attempt: for tiny OPs one
        thread beats many (they would only take turns holding the GIL), but long OPs must not
        wait in line behind each other."""
        self._grow_pending = False
        if self._state != "open" or self._queue.qsize() <= self._idle:
            return
        started = list(self._started.values())
        now = time.monotonic()
        stuck = len(started) >= len(self._threads) and all(now - t > _GROW_AFTER for t in started)
        if stuck and len(self._threads) < self.max_workers:
            self._spawn()
        self._grow_pending = True
        assert self._loop is not None
        self._loop.call_later(_GROW_AFTER, self._maybe_grow)

    def _spawn(self) -> None:
        with self._lock:
            self._idle += 1  # counted idle until it picks up its first item
        t = threading.Thread(target=self._work, name="dflow-async-inline", daemon=True)
        self._threads.append(t)
        t.start()

    def _work(self) -> None:
        owns_cwd = thread_owns_cwd()
        ident = threading.get_ident()
        get, get_nowait, put = self._queue.get, self._queue.get_nowait, self._queue.put
        item: Any = None  # the next attempt, when this thread already holds it
        while True:
            if item is None:  # counted idle (from _spawn, or the end of the loop below)
                try:
                    item = get_nowait()
                except queue.Empty:
                    self._wake_loop()  # never wait for work while outcomes are undelivered
                    item = get()
                with self._lock:
                    self._idle -= 1
            if item is _STOP:
                self._wake_loop()
                return
            self._started[ident] = time.monotonic()
            spec, sink, token = item
            item = None
            if self._begun:  # someone waits for this attempt to start (a timeout clock)
                begun = self._begun.pop(sink, None)
                if begun is not None:
                    self._call_soon(begun.set)
            if self._state == "closed" or (isinstance(sink, asyncio.Future) and sink.cancelled()):
                outcome: AttemptOutcome = Failed(kind="cancelled", error="cancelled before start")
            else:
                outcome = run_attempt(spec, chdir=owns_cwd)
            del self._started[ident]
            if not isinstance(sink, asyncio.Future):  # a continuation: the scheduler's lane
                follow = sink(token, outcome)  # it never raises: errors go to the scheduler
                if follow:
                    if not self._queue.qsize():
                        # This thread goes straight on with the first (it stays busy: no
                        # queue, no idle count); the others wait in the queue for any thread.
                        item = follow[0]
                        if len(follow) > 1:
                            for extra in follow[1:]:
                                put(extra)
                            self._watch_queue()
                        continue
                    # Attempts queued before these go first (taken below): a chain of short
                    # steps (a fan-out under pool_size) kept its thread, and with no thread
                    # stuck long enough to add another, starved them to its end.
                    for extra in follow:
                        put(extra)
                    self._watch_queue()
            else:
                with self._lock:
                    self._done.append((sink, outcome))
                    full = len(self._done) >= _BATCH
                # Outcomes go back in batches: when this worker runs dry (above) or a batch
                # has built up, not after every attempt — each wake-up is a pipe write and
                # two GIL hand-offs, which cost more than a tiny OP.
                if full:
                    self._wake_loop()
            # Busy threads take the next queued attempt without counting themselves idle
            # and busy again (two lock round trips per tiny attempt on a wide graph).
            try:
                item = get_nowait()
            except queue.Empty:
                with self._lock:
                    self._idle += 1

    def _watch_queue(self) -> None:
        """A worker queued attempts: if more wait than threads are idle to take them, have
        the loop watch for threads stuck in long attempts (and add one), as it does for
        attempts it queues itself — long OPs must not wait in line behind each other."""
        with self._lock:
            if self._grow_pending or self._queue.qsize() <= self._idle:
                return
            self._grow_pending = True
        self._call_soon(self._watch_growth)

    def _collect(self) -> None:
        """Deliver what finished, without waiting for a worker to wake the loop: a worker
        wakes it only when it runs dry or a batch is full, and meanwhile it may be running
        a long attempt while the outcome of the previous one waits."""
        self._collect_pending = False
        if self._state == "closed":
            return
        if self._done:  # unlocked peek: a miss is caught on the next round
            self._deliver()
        if self._out > 0:
            self._collect_pending = True
            assert self._loop is not None
            self._loop.call_later(_COLLECT_EVERY, self._collect)

    def _wake_loop(self) -> None:
        with self._lock:
            if not self._done or self._wake_pending:
                return
            self._wake_pending = True
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed while a hung OP finished
            self._loop.call_soon_threadsafe(self._deliver)

    def _call_soon(self, fn: Callable[[], Any]) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed while a hung OP finished
            self._loop.call_soon_threadsafe(fn)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        self._out -= len(done)
        if self._state == "closed":
            return  # the run is over (cancelled); nobody waits for these any more
        for future, outcome in done:
            if not future.done():
                future.set_result(outcome)


_ASYNC_CACHE: dict[Any, bool] = {}


def _is_async(op: Any) -> bool:
    # FunctionOP answers per instance; class OPs per class (cached: inspect is not free)
    flag = getattr(op, "_is_async", None)
    if flag is not None:
        return bool(flag)
    cls = type(op)
    known = _ASYNC_CACHE.get(cls)
    if known is None:
        known = _ASYNC_CACHE[cls] = bool(op.is_async)
    return known
