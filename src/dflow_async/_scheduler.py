"""The asyncio shell around :class:`~dflow_async._state.RunState`: it launches attempts on
executors, sleeps before retries, enforces timeouts, and feeds outcomes back."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import types
import warnings
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import anyio

from dflow_async._cache import StepCache
from dflow_async._codec import plain
from dflow_async._compile import walk_templates
from dflow_async._journal import JournalError
from dflow_async._recorder import CACHED, JOURNALED, Recorder, refuse_unrecordable
from dflow_async._spec import AttemptOutcome, AttemptSpec, Failed, Succeeded, outcome_problem
from dflow_async._state import Finish, Instruction, Retry, RunState, Unit
from dflow_async._threads import io_limiter
from dflow_async._worker import arun_attempt
from dflow_async.exceptions import ExecutorClosedError, ExecutorStartError
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
        self.finished = asyncio.Event()
        self.error: BaseException | None = None
        self.eager: deque[Unit] = deque()  # async OPs waiting for a launcher
        self.launcher_active = False
        # The state machine is advanced from the loop and, for plain OPs on the inline
        # executor, from the worker thread that ran the attempt (see finished_in_thread).
        self.lock = threading.Lock()
        self.loop = asyncio.get_running_loop()
        self.closed = False
        # the fast lane's continuation, bound once: a (spec, done, unit) item per attempt
        self.done_in_thread = self.finished_in_thread
        # the loop's thread tokens for the library's cache/artifact I/O, not the application's
        self.io_threads = io_limiter()

    def advance(self, event: Callable[..., list[Instruction]], *args: Any) -> None:
        """Feed the state machine an event, on the loop, and carry out what it answers."""
        with self.lock:
            instructions = event(*args)
        self.apply(instructions)

    def apply(self, instructions: list[Instruction]) -> None:
        # asyncio's own TaskGroup: an anyio start_soon costs several times more per attempt,
        # and with thousands of tiny steps the spawn cost *is* the scheduler's overhead
        spawn = self.tg.create_task
        lanes: dict[Any, list[tuple[AttemptSpec, Any, Unit]]] | None = None
        for ins in instructions:
            if type(ins) is Unit:  # launch it
                unit = ins
                node = unit.sr.node
                lane = node.thread_lane
                if lane is not None and unit.spec.timeout is None:
                    # a plain OP on inline threads: no task, no future, no trip back here
                    if lanes is None:
                        lanes = {}
                    lanes.setdefault(lane, []).append((unit.spec, self.done_in_thread, unit))
                elif node.inline_async and unit.spec.timeout is None and not node.cache:
                    self.eager.append(unit)
                    if not self.launcher_active:
                        self.launcher_active = True
                        spawn(self.launcher())
                else:
                    spawn(self.run_unit(unit))
            elif isinstance(ins, Retry):
                spawn(self.retry_later(ins.unit, ins.delay))
            elif isinstance(ins, Finish):
                # the task group ends when the last attempt (and the journal flusher) does
                self.finished.set()
                if self.recorder is not None:
                    self.recorder.finish(ins.status)
        if lanes is not None:  # handed over in one batch per lane
            for lane, items in lanes.items():
                lane.start_nowait(items)

    def finished_in_thread(
        self, unit: Unit, outcome: AttemptOutcome
    ) -> list[tuple[AttemptSpec, Any, Unit]]:
        """Called by the worker thread that ran ``unit`` (a plain OP on the inline
        executor): advances the run right there and returns the plain attempts it made
        ready, for the same thread to run next. A chain of plain steps thus never waits for
        the event loop to wake up and hand over the next step (a loop -> thread -> loop
        round trip costs more than a tiny step). Everything else (async OPs, other
        executors, retries, the end) goes to the loop."""
        if self.error is not None:
            return []
        try:
            if (
                self.recorder is not None
                and type(outcome) is Succeeded
                and not plain(outcome.outputs)  # (a step of scalars: nothing to check)
            ):
                outcome = refuse_unrecordable(unit.spec, outcome)
            with self.lock:
                if self.closed:  # checked under the lock: a cancelled run stays still
                    return []
                instructions = self.state.unit_finished(unit, outcome)
            lane = unit.sr.node.thread_lane
            follow: list[tuple[AttemptSpec, Any, Unit]] = []
            rest: list[Instruction] = []
            for ins in instructions:
                if (
                    type(ins) is Unit
                    and ins.sr.node.thread_lane is lane
                    and ins.spec.timeout is None
                ):
                    follow.append((ins.spec, self.done_in_thread, ins))
                else:
                    rest.append(ins)
            if rest:
                self.to_loop(self.apply, rest)
            return follow
        except BaseException as exc:  # surface it in the run, not in a worker's log
            self.to_loop(self.fail, exc)
            return []

    def accept(self, unit: Unit, outcome: AttemptOutcome, cached: bool = False) -> AttemptOutcome:
        """``outcome``, or a failure of its step if the journal (or, ``cached``, the step
        cache) could not record one of its outputs: checked before anything consumes them
        (finished_in_thread makes the same check)."""
        journaled = self.recorder is not None
        if not (journaled or cached) or type(outcome) is not Succeeded or plain(outcome.outputs):
            return outcome
        return refuse_unrecordable(unit.spec, outcome, JOURNALED if journaled else CACHED)

    def to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (a cancelled run)
            self.loop.call_soon_threadsafe(fn, *args)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.finished.set()

    async def wait_finished(self) -> None:
        """Keeps the task group open while attempts run outside it (the fast lane)."""
        await self.finished.wait()
        if self.error is not None:
            raise self.error

    async def launcher(self) -> None:
        """Start queued ``async def`` attempts (inline executor) one after another in this task.

        Most tiny async OPs finish without ever suspending, and for them an asyncio Task per
        attempt would be most of the step's cost. So each attempt's coroutine is first stepped
        right here, in a copy of the context as a new task would get. If it suspends, this
        task stays with it to the end (so ``current_task()`` and anyio cancel scopes see one
        task for the attempt's whole life, as with a task of its own) and a new launcher takes
        over the queue.
        """
        queue = self.eager
        started = 0
        while queue:
            unit = queue.popleft()
            ctx = contextvars.copy_context()
            coro = arun_attempt(unit.spec)
            try:
                yielded = ctx.run(coro.send, None)
            except StopIteration as stop:
                self.advance(self.state.unit_finished, unit, self.accept(unit, stop.value))
                started += 1
                if started % _LAUNCH_BATCH == 0:
                    await asyncio.sleep(0)  # let timers, I/O and threads' results in
                continue
            if queue:
                self.tg.create_task(self.launcher())
            else:
                self.launcher_active = False
            outcome = await _carry_on(coro, ctx, yielded)
            self.advance(self.state.unit_finished, unit, self.accept(unit, outcome))
            return
        self.launcher_active = False

    async def run_unit(self, unit: Unit) -> None:
        spec = unit.spec
        node = unit.sr.node
        cache = self.cache if node.cache else None
        key = None
        if cache is not None:
            threads = self.io_threads
            key = await anyio.to_thread.run_sync(cache.key, spec, limiter=threads)
            hit = await anyio.to_thread.run_sync(cache.get, key, limiter=threads)
            if hit is not None:
                unit.sr.record.cached = True
                self.advance(self.state.unit_finished, unit, Succeeded(outputs=tuple(hit)))
                return
        outcome = self.accept(unit, await self.attempt(unit), key is not None)
        if key is not None and cache is not None and isinstance(outcome, Succeeded):
            await anyio.to_thread.run_sync(cache.put, key, outcome.outputs, limiter=self.io_threads)
        self.advance(self.state.unit_finished, unit, outcome)

    async def attempt(self, unit: Unit) -> AttemptOutcome:
        spec = unit.spec
        executor = self.executors[unit.sr.node.executor]
        try:
            if spec.timeout is None:
                outcome: AttemptOutcome = await executor.run(spec)
            else:
                outcome = await _run_timed(executor, spec, spec.timeout)
        except Exception as exc:  # a broken executor must not take the run down silently
            return Failed(
                kind="infra",
                error=f"executor {executor.name!r} failed: {type(exc).__name__}: {exc}",
                retryable=True,
            )
        # a plugin's outcome, checked before the run consumes it: None (or a dropped slice
        # or output) ended the run with an error from inside the state machine, or passed
        # as a step that succeeded without its outputs
        problem = outcome_problem(spec, outcome)
        if problem is not None:
            return Failed(kind="infra", error=f"executor {executor.name!r} {problem}")
        return outcome

    async def retry_later(self, unit: Unit, delay: float) -> None:
        await anyio.sleep(delay)
        self.advance(self.state.retry_due, unit)


_LAUNCH_BATCH = 256


class _OnLoop:
    """An event hook called on the event loop, in the order of the events, whichever thread
    advanced the run: user hooks (progress bars, asyncio code) expect the loop."""

    def __init__(self, hook: Callable[[str, Any, dict[str, Any]], None], lock: threading.Lock):
        self.hook = hook
        self.lock = lock  # the state machine's: events are reported while it is held
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.queue: list[tuple[str, Any, dict[str, Any]]] = []

    def __call__(self, kind: str, record: Any, fields: dict[str, Any]) -> None:
        if not self.queue and threading.get_ident() == self.thread:
            self.hook(kind, record, fields)
            return
        self.queue.append((kind, record, fields))
        if len(self.queue) == 1:  # the first since the last drain schedules the next
            with contextlib.suppress(RuntimeError):  # the loop closed (a cancelled run)
                self.loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        with self.lock:
            events, self.queue = self.queue, []
        for kind, record, fields in events:
            self.hook(kind, record, fields)


async def _run_timed(executor: Executor, spec: AttemptSpec, timeout: float) -> AttemptOutcome:
    """``executor.run`` with a timeout that counts from the attempt's start, not from the
    time it waited in the executor's queue for a free worker."""
    handle = await executor.submit(spec)
    try:
        await executor.started(handle)
        with anyio.move_on_after(timeout) as scope:
            outcome = await executor.wait(handle)
        if not scope.cancelled_caught:
            return outcome
    except BaseException:
        with anyio.CancelScope(shield=True):
            await executor.cancel(handle)
        raise
    with anyio.CancelScope(shield=True):
        await executor.cancel(handle)
    if executor.can_stop(spec):
        what = "was stopped; raise timeout= if it needs longer"
    else:
        what = (
            f"could not be stopped: the {executor.name!r} executor runs plain (def) OPs on "
            "threads, which Python cannot interrupt, so it runs on in the background and its "
            "outcome is discarded; run steps that may hang on executor='process' (their "
            "process is killed), or raise timeout= if it needs longer"
        )
    return Failed(
        kind="timeout",
        error=f"step {spec.step!r} timed out after {timeout:g} s and {what}",
        retryable=True,
        duration=timeout,
    )


@types.coroutine
def _carry_on(
    coro: Coroutine[Any, Any, AttemptOutcome], ctx: contextvars.Context, yielded: Any
) -> Generator[Any, Any, AttemptOutcome]:
    """Drive a coroutine that was already stepped once (and yielded ``yielded``) from the
    awaiting task, in its own context: what the task would have done had it started it."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation and the like: delivered where it waits
            try:
                yielded = ctx.run(coro.throw, exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = ctx.run(coro.send, sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


async def _open(executor: Executor, run_id: str) -> None:
    try:
        await executor.__aenter__()
    except (ExecutorClosedError, ExecutorStartError):
        raise
    except Exception as exc:  # a plugin's own error: which executor, and what it means here
        raise ExecutorStartError(
            f"the {executor.name!r} executor could not start ({type(exc).__name__}: {exc}); "
            f"no step of run {run_id} was started: fix it, then resume the run "
            f"(wf.run(resume={run_id!r}) or `dflow-async resume {run_id}`)"
        ) from exc


async def _close(executor: Executor) -> None:
    """Stop an executor at the end of a run. Its failure to stop is a warning: the run's
    outcome is already decided and journaled, and raising here lost it (the result) for
    what is at worst a leak of the backend's resources, which the warning names."""
    try:
        await executor.__aexit__(None, None, None)  # closed once no other run uses it
    except Exception as exc:
        warnings.warn(
            f"the {executor.name!r} executor failed to stop ({type(exc).__name__}: {exc}); "
            "the run's results are kept, but the backend may hold on to workers or "
            "resources it started",
            RuntimeWarning,
            stacklevel=2,
        )


def _mark_lanes(root: Any, executors: dict[Any, Executor]) -> None:
    """Which steps skip the executor interface: ``async def`` OPs on the inline executor are
    awaited in the loop; plain OPs on an executor that takes continuations (the inline
    executor's threads, ``start_nowait``) go there directly, unless the step is cached."""
    from dflow_async.executors._inline import InlineExecutor, _is_async

    for ct in walk_templates(root):
        for node in ct.nodes:
            if node.op is not None:
                executor = executors.get(node.executor)
                is_async = _is_async(node.op)
                node.inline_async = is_async and isinstance(executor, InlineExecutor)
                takes_continuations = getattr(executor, "start_nowait", None) is not None
                lane = takes_continuations and not is_async and not node.cache
                node.thread_lane = executor if lane else None


async def execute(
    state: RunState,
    executors: dict[Any, Executor],
    recorder: Recorder | None = None,
    cache: StepCache | None = None,
) -> str:
    """Run to completion; returns the final status. Cancelling this coroutine cancels every
    running attempt (executors kill their processes) before it returns."""
    shell: _Shell | None = None
    async with contextlib.AsyncExitStack() as stack:
        for executor in executors.values():
            await _open(executor, state.run_id)
            stack.push_async_callback(_close, executor)
        try:
            async with asyncio.TaskGroup() as tg:
                _mark_lanes(state.root_ct, executors)
                shell = _Shell(state, executors, tg, recorder, cache)
                if recorder is not None:
                    recorder.attach(shell.lock)
                    tg.create_task(recorder.run())
                elif state.on_event is not None:
                    state.on_event = _OnLoop(state.on_event, shell.lock)
                tg.create_task(shell.wait_finished())
                shell.advance(state.start)
        except BaseException:
            if shell is None:
                state.cancel()
            else:
                with shell.lock:  # worker threads may be advancing the run right now
                    shell.closed = True
                    state.cancel()
                if isinstance(state.on_event, _OnLoop):
                    state.on_event.drain()  # the loop may not come round to it any more
            if recorder is not None:
                with anyio.CancelScope(shield=True), contextlib.suppress(JournalError):
                    await anyio.to_thread.run_sync(
                        recorder.flush_now, "Cancelled", limiter=recorder.threads
                    )
            raise
        finally:
            if shell is not None:
                shell.closed = True
    return state.status
