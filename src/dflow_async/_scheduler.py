"""The asyncio shell around :class:`~dflow_async._state.RunState`: it launches attempts on
executors, sleeps before retries, enforces timeouts, and feeds outcomes back."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio

from dflow_async._cache import StepCache
from dflow_async._spec import AttemptOutcome, Failed, Succeeded
from dflow_async._journal import JournalError
from dflow_async._recorder import Recorder
from dflow_async._state import Finish, Instruction, Launch, Retry, RunState, Unit
from dflow_async.executors._base import Executor

__all__ = ["execute"]


class _Shell:
    def __init__(
        self,
        state: RunState,
        executors: dict[Any, Executor],
        tg: asyncio.TaskGroup,
        recorder: Recorder | None,
        cache: StepCache | None,
    ) -> None:
        self.state = state
        self.executors = executors
        self.tg = tg
        self.recorder = recorder
        self.cache = cache

    def apply(self, instructions: list[Instruction]) -> None:
        # asyncio's own TaskGroup: an anyio start_soon costs several times more per attempt,
        # and with thousands of tiny steps the spawn cost *is* the scheduler's overhead
        spawn = self.tg.create_task
        for ins in instructions:
            if isinstance(ins, Launch):
                spawn(self.run_unit(ins.unit))
            elif isinstance(ins, Retry):
                spawn(self.retry_later(ins.unit, ins.delay))
            elif isinstance(ins, Finish):
                # the task group ends when the last attempt (and the journal flusher) does
                if self.recorder is not None:
                    self.recorder.finish(ins.status)

    async def run_unit(self, unit: Unit) -> None:
        spec = unit.spec
        cache = self.cache if unit.sr.node.cache else None
        key = None
        if cache is not None:
            key = await anyio.to_thread.run_sync(cache.key, spec)
            hit = await anyio.to_thread.run_sync(cache.get, key)
            if hit is not None:
                unit.sr.record.cached = True
                self.apply(self.state.unit_finished(unit, Succeeded(outputs=tuple(hit))))
                return
        outcome = await self.attempt(unit)
        if key is not None and cache is not None and outcome.ok:
            await anyio.to_thread.run_sync(cache.put, key, outcome.outputs)
        self.apply(self.state.unit_finished(unit, outcome))

    async def attempt(self, unit: Unit) -> AttemptOutcome:
        spec = unit.spec
        executor = self.executors[unit.sr.node.executor]
        try:
            if spec.timeout is None:
                outcome: AttemptOutcome = await executor.run(spec)
            else:
                with anyio.move_on_after(spec.timeout) as scope:
                    outcome = await executor.run(spec)
                if scope.cancelled_caught:
                    outcome = Failed(
                        kind="timeout",
                        error=f"step {spec.step!r} timed out after {spec.timeout:g} s and was "
                        "stopped; raise timeout= if it needs longer",
                        retryable=True,
                        duration=spec.timeout,
                    )
        except Exception as exc:  # a broken executor must not take the run down silently
            outcome = Failed(
                kind="infra",
                error=f"executor {executor.name!r} failed: {type(exc).__name__}: {exc}",
                retryable=True,
            )
        return outcome

    async def retry_later(self, unit: Unit, delay: float) -> None:
        await anyio.sleep(delay)
        self.apply(self.state.retry_due(unit))


async def execute(
    state: RunState,
    executors: dict[Any, Executor],
    recorder: Recorder | None = None,
    cache: StepCache | None = None,
) -> str:
    """Run to completion; returns the final status. Cancelling this coroutine cancels every
    running attempt (executors kill their processes) before it returns."""
    async with contextlib.AsyncExitStack() as stack:
        for executor in executors.values():
            await stack.enter_async_context(executor)
        try:
            async with asyncio.TaskGroup() as tg:
                if recorder is not None:
                    tg.create_task(recorder.run())
                _Shell(state, executors, tg, recorder, cache).apply(state.start())
        except BaseException:
            state.cancel()
            if recorder is not None:
                with anyio.CancelScope(shield=True), contextlib.suppress(JournalError):
                    await anyio.to_thread.run_sync(recorder.flush_now, "Cancelled")
            raise
    return state.status
