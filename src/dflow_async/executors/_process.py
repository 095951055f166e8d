"""ProcessExecutor: attempts run in a pool of local worker processes.

The pool is our own rather than ``concurrent.futures.ProcessPoolExecutor`` because one worker
dying must cost only its own attempt, and one attempt must be killable on its own. Each worker
runs one attempt at a time in its own process group; the driver talks to it over a
``multiprocessing`` pipe (cloudpickled payloads) and watches both the pipe and the process
sentinel from the asyncio event loop with ``add_reader``, so nothing blocks the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import multiprocessing
import os
import signal
import traceback
import weakref
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import anyio
import cloudpickle

from dflow_async._spec import AttemptOutcome, AttemptSpec, Failed
from dflow_async._threads import io_limiter
from dflow_async.executors import _procworker
from dflow_async.executors._base import AttemptHandle, Executor
from dflow_async.executors._procworker import (
    UNGUARDED_MAIN_EXIT,
    frame_messages,
    lost_outcome,
    unguarded_main_outcome,
)

__all__ = ["ProcessExecutor"]

_READ_CHUNK = 1 << 20
_REAP_POLL = 0.005  # seconds between exit-status polls once a worker's sentinel fired
_REAP_TRIES = 400
_PRELOAD = ("cloudpickle", "dflow_async._worker", "dflow_async.executors._procworker")
_open_executors: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


class _Worker:
    """One worker process, its pipe, and the attempt it runs (if any)."""

    def __init__(self, proc: BaseProcess, conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.pid: int = proc.pid  # type: ignore[assignment]
        self.fd = conn.fileno()
        self.sentinel = proc.sentinel
        self.buf = bytearray()
        self.job: _Job | None = None
        self.killing = False  # SIGTERM sent; never given work again
        self.broken = False  # its pipe closed: it is exiting, never given work again
        self.dead = False  # its exit was seen
        self.kill_timer: asyncio.TimerHandle | None = None
        self.exited = asyncio.Event()


class _Job:
    """The executor's state for one submitted attempt (the handle's token)."""

    def __init__(self, spec: AttemptSpec) -> None:
        self.spec = spec
        self.payload: bytes | None = None
        self.worker: _Worker | None = None
        self.killed: _Worker | None = None  # the worker cancel() killed
        self.outcome: AttemptOutcome | None = None
        self.done = asyncio.Event()
        self.running = asyncio.Event()  # sent to a worker, or ended before that


class ProcessExecutor(Executor):
    """Run attempts in up to ``max_workers`` local processes (default: one per CPU).

    Workers start lazily as work arrives and are reused. ``mp_context`` is the
    ``multiprocessing`` start method; ``kill_grace`` is how long a cancelled worker gets
    between SIGTERM and SIGKILL (sent to its whole process group).
    """

    name = "process"

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        mp_context: str = "forkserver",
        kill_grace: float = 1.0,
    ) -> None:
        workers = (os.cpu_count() or 1) if max_workers is None else int(max_workers)
        if workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers!r}")
        self.max_workers = workers
        self.mp_context = mp_context
        self.kill_grace = float(kill_grace)
        self._ctx = multiprocessing.get_context(mp_context)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[_Job] = deque()
        self._workers: set[_Worker] = set()
        self._idle: list[_Worker] = []
        self._dying: set[_Worker] = set()  # killed, SIGKILL of their group still pending
        self._spawning = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # a worker ended importing a main script that runs a workflow: so would every other
        self._unguarded = False

    # -- Executor API -------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "ProcessExecutor needs the asyncio event loop (anyio's asyncio backend)"
            ) from None
        if self.mp_context == "forkserver":
            _preload_in_fork_server()
        _open_executors.add(self)

    async def stop(self) -> None:
        with anyio.CancelScope(shield=True):
            while self._queue:
                self._finish(self._queue.popleft(), _cancelled("before it started"))
            if self._tasks:  # workers being started: let them land, then kill them
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            victims = list(self._workers)
            for worker in victims:
                if worker.job is not None:
                    self._finish(worker.job, _cancelled("when the executor closed"))
                self._kill(worker)
            with anyio.move_on_after(self.kill_grace + 5):
                for worker in victims:
                    await worker.exited.wait()
            for worker in list(self._workers):  # did not die in time: force it
                self._signal(worker, signal.SIGKILL)
                await anyio.to_thread.run_sync(worker.proc.join, 5, limiter=io_limiter())
                self._retire(worker, worker.proc.exitcode)
            for worker in list(self._dying):  # no grace left: SIGKILL what remains of groups
                if worker.kill_timer is not None:
                    worker.kill_timer.cancel()
                self._signal(worker, signal.SIGKILL)
            self._dying.clear()
        _open_executors.discard(self)

    async def submit(self, spec: AttemptSpec) -> AttemptHandle:
        self._ensure_open()
        job = _Job(spec)
        handle = AttemptHandle(spec=spec, token=job)
        try:
            job.payload = bytes(cloudpickle.dumps(spec))
        except Exception as exc:
            error = (
                f"attempt {spec.attempt_id!r} cannot be sent to a worker process "
                f"({type(exc).__name__}: {exc}); make its OP and inputs picklable (define the "
                "OP at module level) or use executor='inline'"
            )
            tb = traceback.format_exc()
            self._finish(job, Failed(kind="fatal", error=error, traceback=tb, retryable=False))
            return handle
        self._queue.append(job)
        self._dispatch()
        return handle

    async def wait(self, handle: AttemptHandle) -> AttemptOutcome:
        job: _Job = handle.token
        await job.done.wait()  # cancelling this wait leaves the attempt running
        assert job.outcome is not None
        return job.outcome

    async def started(self, handle: AttemptHandle) -> None:
        job: _Job = handle.token
        await job.running.wait()

    async def cancel(self, handle: AttemptHandle) -> None:
        job: _Job = handle.token
        if job.outcome is None:
            worker = job.worker
            if worker is None:
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)
                self._finish(job, _cancelled("before it started"))
                return
            self._finish(job, _cancelled(f"while running; its worker (pid {worker.pid}) is killed"))
            job.killed = worker
            self._kill(worker)
        if job.killed is not None:
            with anyio.move_on_after(self.kill_grace + 5):
                await job.killed.exited.wait()

    def check_op(self, op: Any) -> str | None:
        try:
            cloudpickle.dumps(op)
        except Exception as exc:
            return (
                f"the OP {_describe(op)} cannot be sent to worker processes "
                f"({type(exc).__name__}: {exc}); define it at module level or use "
                "executor='inline'"
            )
        return None

    # -- pool ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self._state != "open":
            return
        if self._unguarded:  # starting more workers would only run the script again
            while self._queue:
                self._finish(self._queue.popleft(), unguarded_main_outcome(None))
            return
        while self._queue and self._idle:
            worker = self._idle.pop()
            job = self._queue.popleft()
            try:
                worker.conn.send_bytes(job.payload or b"")
            except OSError:  # died while idle; its sentinel will retire it
                self._queue.appendleft(job)
                self._kill(worker)
                continue
            job.payload = None
            job.worker = worker
            worker.job = job
            job.running.set()
        wanted = len(self._queue) - self._spawning
        room = self.max_workers - len(self._workers) - self._spawning
        for _ in range(min(wanted, room)):
            self._spawning += 1
            task = self._get_loop().create_task(self._spawn())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _spawn(self) -> None:
        try:
            worker = await self._start_worker()
        except Exception as exc:
            self._spawning -= 1
            if not self._workers and not self._spawning:
                error = f"could not start a worker process ({type(exc).__name__}: {exc})"
                while self._queue:
                    failed = Failed(kind="infra", error=error, retryable=True)
                    self._finish(self._queue.popleft(), failed)
            return
        self._spawning -= 1
        loop = self._get_loop()
        self._workers.add(worker)
        loop.add_reader(worker.fd, self._on_readable, worker)
        loop.add_reader(worker.sentinel, self._on_sentinel, worker)
        self._idle.append(worker)
        self._dispatch()

    async def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(  # type: ignore[attr-defined]
            target=_procworker.worker_main,
            args=(child,),
            name="dflow-async-worker",
            daemon=False,  # daemonic processes may not start multiprocessing children
        )
        try:
            if self.mp_context == "forkserver":
                # Talks to the fork server (blocking; slow the first time): use a thread.
                # Not for fork/spawn: PDEATHSIG fires when the *thread* that forked exits.
                await self._get_loop().run_in_executor(None, proc.start)
            else:
                proc.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        return _Worker(proc, parent)

    def _on_readable(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the pipe closed: the worker exits (its sentinel will report it)
            self._get_loop().remove_reader(worker.fd)
            worker.broken = True
            if worker in self._idle:
                self._idle.remove(worker)
            return
        worker.buf += data
        for message in frame_messages(worker.buf):
            self._on_message(worker, message)

    def _on_message(self, worker: _Worker, message: bytes) -> None:
        job, worker.job = worker.job, None
        if job is None:
            return
        try:
            outcome = cloudpickle.loads(message)
        except Exception as exc:
            outcome = Failed(
                kind="infra",
                error=(
                    f"the outcome of attempt {job.spec.attempt_id!r} could not be unpickled in "
                    f"the driver ({type(exc).__name__}: {exc})"
                ),
                traceback=traceback.format_exc(),
                retryable=True,
            )
        self._finish(job, outcome)
        if not (worker.killing or worker.broken or worker.dead):
            self._idle.append(worker)
            self._dispatch()

    def _on_sentinel(self, worker: _Worker, tries: int = 0) -> None:
        if tries == 0:
            self._get_loop().remove_reader(worker.sentinel)
        try:
            code = worker.proc.exitcode  # non-blocking poll
        except Exception:
            code = None
        if code is None and tries < _REAP_TRIES:  # fork/spawn: pipe closed before reaping
            self._get_loop().call_later(_REAP_POLL, self._on_sentinel, worker, tries + 1)
            return
        self._retire(worker, code)

    def _retire(self, worker: _Worker, code: int | None) -> None:
        if worker.dead:
            return
        worker.dead = True
        loop = self._get_loop()
        with contextlib.suppress(OSError):  # read what it sent before dying
            os.set_blocking(worker.fd, False)
            while data := os.read(worker.fd, _READ_CHUNK):
                worker.buf += data
        for message in frame_messages(worker.buf):
            self._on_message(worker, message)
        loop.remove_reader(worker.fd)
        loop.remove_reader(worker.sentinel)
        worker.conn.close()
        with contextlib.suppress(Exception):
            worker.proc.join(0)
            worker.proc.close()
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        if worker.kill_timer is None:  # lost: kill what it left behind in its group
            self._signal(worker, signal.SIGKILL)
        if code == UNGUARDED_MAIN_EXIT:
            self._unguarded = True
        job, worker.job = worker.job, None
        if job is not None:
            self._finish(job, lost_outcome(job.spec, worker.pid, code))
        worker.exited.set()
        self._dispatch()

    def _kill(self, worker: _Worker) -> None:
        """SIGTERM the worker's process group now, SIGKILL it after the grace period."""
        if worker.killing or worker.dead:
            return
        worker.killing = True
        if worker in self._idle:
            self._idle.remove(worker)
        self._signal(worker, signal.SIGTERM)
        self._dying.add(worker)
        worker.kill_timer = self._get_loop().call_later(self.kill_grace, self._final_kill, worker)

    def _final_kill(self, worker: _Worker) -> None:
        self._dying.discard(worker)
        self._signal(worker, signal.SIGKILL)

    @staticmethod
    def _signal(worker: _Worker, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, sig)
        if not worker.dead:  # before its setsid() the group does not exist yet
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(worker.pid, sig)

    def _finish(self, job: _Job, outcome: AttemptOutcome) -> None:
        if job.outcome is None:
            job.outcome = outcome
            job.payload = None
            job.done.set()
            job.running.set()

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the executor was not started"
        return self._loop


def _cancelled(when: str) -> Failed:
    return Failed(kind="cancelled", error=f"the attempt was cancelled {when}")


def _preload_in_fork_server() -> None:
    """Have the fork server import the worker code once, so each worker starts warm.

    Appends to (never replaces) the preload list; it only matters before the server starts.
    """
    from multiprocessing import forkserver

    with contextlib.suppress(Exception):
        current = list(forkserver._forkserver._preload_modules)  # type: ignore[attr-defined]
        wanted = current + [m for m in _PRELOAD if m not in current]
        if wanted != current:
            forkserver.set_forkserver_preload(wanted)


def _describe(op: Any) -> str:
    from dflow_async._op import OP, op_name

    return repr(op_name(op)) if isinstance(op, OP) else repr(op)


def kill_workers_now() -> None:
    """SIGKILL the process groups of every open executor's workers: what a second Ctrl-C
    does, where the executors would give them ``kill_grace`` to stop. They are retired as
    usual when their exit is seen."""
    for executor in list(_open_executors):
        for worker in list(executor._workers):
            executor._signal(worker, signal.SIGKILL)


@atexit.register
def _kill_leftover_workers() -> None:
    # Runs before multiprocessing joins its children at exit (atexit is LIFO), so an executor
    # that was never closed cannot hang the interpreter's exit.
    kill_workers_now()
