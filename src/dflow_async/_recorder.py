"""Connects the state machine to the journal: buffers every state change, commits bursts in a
worker thread, and only then tells the event hooks — so a step is reported succeeded only
after its record is durable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import anyio

from dflow_async._events import EventHook
from dflow_async._journal import Journal
from dflow_async._records import StepRecord

__all__ = ["Recorder"]


class Recorder:
    """``on_event`` / ``on_unit`` for :class:`RunState` when the run has a journal."""

    def __init__(self, journal: Journal, hook: EventHook | None, interval: float = 0.02) -> None:
        self.journal = journal
        self.hook = hook
        self.interval = interval  # gather a burst: one transaction per burst, not per event
        self._pending: list[tuple[str, StepRecord, dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._closing = False

    # called by the state machine, on the event loop
    def on_event(self, kind: str, record: StepRecord, fields: dict[str, Any]) -> None:
        detail = fields.get("error") if fields else None
        self.journal.step_changed(kind, record, record.attempts, detail)
        if self.hook is not None:
            self._pending.append((kind, record, fields))
        self._wake.set()

    def on_unit(self, path: str, unit: int, outputs: Sequence[Any]) -> None:
        self.journal.unit_done(path, unit, outputs)
        self._wake.set()

    def finish(self, status: str) -> None:
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
            if self._closing and not self.journal.pending:
                return

    async def _flush(self) -> None:
        if not self.journal.pending:
            return
        burst = self.journal.take()
        events, self._pending = self._pending, []
        await anyio.to_thread.run_sync(self.journal.write, burst)
        if self.hook is not None:
            for kind, record, fields in events:
                self.hook(kind, record, fields)

    def flush_now(self, status: str | None = None) -> None:
        """Synchronous last write, for a run that is being cancelled."""
        if status is not None:
            self.journal.set_meta(status=status)
        self.journal.flush()
