"""Connects the state machine to the journal: buffers every state change, commits bursts in a
worker thread, and only then tells the event hooks — so a step is reported succeeded only
after its record is durable."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import anyio

from dflow_async._codec import type_label, unrecordable
from dflow_async._events import EventHook
from dflow_async._journal import Journal
from dflow_async._records import StepRecord
from dflow_async._spec import AttemptOutcome, AttemptSpec, Failed, Succeeded
from dflow_async._threads import journal_limiter

__all__ = ["CACHED", "JOURNALED", "Recorder", "refuse_unrecordable"]

#: why a step's outputs must be recordable: when the run has a journal...
JOURNALED = (
    "a durable run records every output in its journal (pickling what JSON cannot hold) so "
    "that a resumed run can reuse it"
)
#: ... and when the step is cached
CACHED = (
    "the step is cached (cache=True), and the cache keeps every output (pickling what JSON "
    "cannot hold) for later runs to reuse"
)


def refuse_unrecordable(
    spec: AttemptSpec, outcome: Succeeded, why: str = JOURNALED
) -> AttemptOutcome:
    """``outcome``, or a failure of its step (kind ``user``) when one of its outputs cannot be
    recorded (see :func:`~dflow_async._codec.unrecordable`): the driver checks a step's
    outputs where it accepts them, before anything consumes them, since the journal's writer
    meets them only later, in another thread, where all it could do is end the run."""
    for piece, values in zip(spec.slices, outcome.outputs, strict=False):
        for name, value in values.items():
            problem = unrecordable(value)
            if problem is None:
                continue
            what = type_label(value)
            where = f"step {spec.step!r}"
            if piece.index is not None:
                where += f" (slice {piece.index})"
            which = "holding a value that" if isinstance(value, list | tuple | dict) else "which"
            error = (
                f"{where} returned a value of type {what} for its output {name!r}, {which} "
                f"cannot be pickled ({type(problem).__name__}: {problem}): {why}. Return "
                "picklable values (plain data, dataclasses, arrays), or write files and return "
                "their paths through an Artifact output"
            )
            tb = "".join(traceback.format_exception(problem))
            return Failed(
                kind="user", error=error, traceback=tb, retryable=False, duration=outcome.duration
            )
    return outcome


class Recorder:
    """``on_event`` / ``on_unit`` for :class:`RunState` when the run has a journal."""

    def __init__(self, journal: Journal, hook: EventHook | None, interval: float = 0.02) -> None:
        self.journal = journal
        self.hook = hook
        self.interval = interval  # gather a burst: one transaction per burst, not per event
        self._pending: list[tuple[str, StepRecord, dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        # The state machine calls on_event/on_unit holding this lock, from the loop or from
        # a worker thread (plain OPs advance the run where they ran); taking a burst holds it
        # too, so a burst never catches a half-recorded change.
        self._lock: threading.Lock | contextlib.nullcontext[None] = contextlib.nullcontext()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake_sent = False  # a worker thread has asked the loop to wake the flusher
        self._unit_rows: dict[str, int] = {}  # fan-out step -> work dirs its row last held
        # the run's own thread tokens: never behind the application's, nor artifact I/O
        self.threads = journal_limiter()

    def attach(self, lock: threading.Lock) -> None:
        """Share the lock under which the run's state machine calls this recorder."""
        self._lock = lock

    # called by the state machine, holding its lock
    def on_event(self, kind: str, record: StepRecord, fields: dict[str, Any]) -> None:
        if kind == "unit_done":  # progress, for the hooks only: on_unit journals the unit
            self._pending.append((kind, record, fields))
            self._poke()
            return
        detail = fields.get("error") if fields else None
        self.journal.step_changed(kind, record, record.attempts, detail)
        if self.hook is not None:
            self._pending.append((kind, record, fields))
        self._poke()

    def on_unit(self, record: StepRecord, unit: int, outputs: Sequence[Any]) -> None:
        self.journal.unit_done(record.path, unit, outputs)
        # And the step's row, so that its attempts and work dirs (logs) so far survive a
        # crash: the row holds every work dir, so on a wide fan-out it is rewritten only as
        # their number grows by a quarter (written bytes stay linear; a crash forgets at most
        # the last fifth, whose outputs the units keep all the same).
        done = len(record.workdirs)
        if done < 256 or done >= self._unit_rows.get(record.path, 0) * 1.25:
            self._unit_rows[record.path] = done
            self.journal.step_changed("unit", record, record.attempts, None)
        self._poke()

    def _poke(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        elif not self._wake_sent:  # one loop wake-up per burst, not one per event
            self._wake_sent = True
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to flush
                self._loop.call_soon_threadsafe(self._wake.set)

    def finish(self, status: str) -> None:
        with self._lock:
            self.journal.set_meta(status=status, ended=repr(time.time()))
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        """The flusher task: lives until the run finishes and everything is written."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                await asyncio.sleep(self.interval)
            await self._flush()
            if self._closing:
                with self._lock:
                    if not self.journal.pending:
                        return

    async def _flush(self) -> None:
        with self._lock:
            self._wake_sent = False  # what is recorded from here on wakes the flusher again
            if not self.journal.pending:
                return
            burst = self.journal.take()
            events, self._pending = self._pending, []
        await anyio.to_thread.run_sync(self.journal.write, burst, limiter=self.threads)
        if self.hook is not None:
            for kind, record, fields in events:
                self.hook(kind, record, fields)

    def flush_now(self, status: str | None = None) -> None:
        """Synchronous last write, for a run that is being cancelled (runs in a worker thread;
        the journal queues it behind a flusher write the cancellation left running)."""
        with self._lock:  # worker threads may still be recording
            if status is not None:
                self.journal.set_meta(status=status)
            burst = self.journal.take() if self.journal.pending else None
        if burst is not None:
            self.journal.write(burst)
