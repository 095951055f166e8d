"""run_attempt: the one function every executor runs, wherever it runs.

It checks inputs against the OP's sign, runs the OP in the slice's work directory, checks the
outputs, and turns artifact paths into absolute paths that stay inside the work directory.
Everything that goes wrong becomes a :class:`Failed` value; nothing is raised to the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import inspect
import itertools
import os
import shutil
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

import anyio

from dflow_async import _stored
from dflow_async._capture import append_to_log, route_std_streams
from dflow_async._capture import capture_fds as fd_capture
from dflow_async._op import (
    IMMUTABLE,
    OP,
    OPIO,
    FunctionOP,
    PortPlan,
    StepContext,
    _current,
    artifact_paths,
    check_opio,
    exactly_typed,
    port_plan,
)
from dflow_async._spec import AttemptOutcome, AttemptSpec, Failed, SliceInput, Succeeded
from dflow_async._store_local import ensure_dir
from dflow_async._stored import (
    BigValue,
    InputFetchError,
    commit,
    holds_big,
    load_big,
    materialise,
    store_big,
)
from dflow_async._threads import io_limiter
from dflow_async.exceptions import ArtifactError, FatalError, SignatureError, TransientError

__all__ = ["arun_attempt", "failure_from_exception", "run_attempt", "thread_owns_cwd"]


def run_attempt(
    spec: AttemptSpec, *, chdir: bool = True, capture_fds: bool = False
) -> AttemptOutcome:
    """Run every slice of the attempt in this thread. ``chdir`` moves into each work dir:
    safe in a worker process, or in a thread that called :func:`thread_owns_cwd`.
    ``capture_fds`` (worker processes) sends file descriptors 1/2 to the attempt's log."""
    start = time.perf_counter()
    if chdir and not getattr(_owns_cwd, "value", False) and not _main_thread():
        return Failed(kind="infra", error=_SHARED_CWD)
    outputs: list[dict[str, Any]] = []
    try:
        plan = port_plan(spec.op)
        if not capture_fds:
            route_std_streams()  # once per attempt, not per slice
        scratch = chdir and bool(spec.run_dir)
        commits = spec.store is not None and bool(plan.out_artifacts or plan.out_big)
        for piece in spec.slices:
            if scratch:
                values = _run_in_scratch(spec, piece, plan, capture_fds)
            else:
                with _in_dir(piece.workdir, chdir):
                    values = _run_slice(spec, piece, plan, piece.workdir, capture_fds, None)
            if commits:
                values = _commit_outputs(spec, plan, values, piece.workdir)
            outputs.append(values)
    except BaseException as exc:
        # sys.exit(), KeyboardInterrupt or CancelledError raised by the OP itself fail the step,
        # never the worker: a worker thread would die and its run wait for ever (a real Ctrl-C
        # reaches the main thread; process workers ignore SIGINT)
        return _failed(spec, len(outputs), exc, time.perf_counter() - start)
    return Succeeded(tuple(outputs), time.perf_counter() - start)


def _failed(spec: AttemptSpec, done: int, exc: BaseException, duration: float) -> Failed:
    """The failure of an attempt whose slice number ``done`` raised ``exc``; its traceback
    goes to that slice's log, where `dflow-async logs` shows it (the step's record keeps
    the one-line error)."""
    failure = failure_from_exception(exc, duration)
    if done < len(spec.slices):
        append_to_log(spec.slices[done].workdir, failure.traceback)
    return failure


#: why run_attempt refuses to move into work dirs on a thread that shares the process's cwd
_SHARED_CWD = (
    "run_attempt(spec) was called on a thread that shares the process's current directory: "
    "moving into the attempt's work directory would move every thread's, the driver's "
    "included. Call dflow_async.executors.thread_owns_cwd() in that thread first (it returns "
    "False where the platform cannot give a thread its own), or pass chdir=False (OPs then "
    "find their directory in current_context().workdir)"
)


def _main_thread() -> bool:
    # A process's main thread may move the process's cwd: a worker process runs attempts
    # there, one at a time.
    return threading.current_thread() is threading.main_thread()


def _run_in_scratch(
    spec: AttemptSpec, piece: SliceInput, plan: PortPlan, capture_fds: bool
) -> dict[str, Any]:
    # This thread's (or process's) fresh scratch directory; if the OP leaves anything there,
    # it is renamed to the slice's work dir afterwards. Most OPs write nothing, and a mkdir
    # per step would cost more than the step.
    dirs = getattr(_scratch, "dirs", None)  # _scratch_dir()'s lookup, here: this runs per step
    found = dirs.get(spec.run_dir) if dirs else None
    if found is None:
        found = _scratch_dir(spec.run_dir)
    where = found.path
    os.fchdir(found.fd)  # the thread owns its cwd: nothing to restore
    try:
        values = _run_slice(
            spec, piece, plan, where, capture_fds, f"{where}.log" if capture_fds else None
        )
    except BaseException:
        # what a failed attempt wrote is its own, never the next attempt's
        _settle(found, spec.run_dir, piece.workdir, quiet=True)
        raise
    if os.fstat(found.fd).st_mtime_ns == 0:  # untouched(), the common case: nothing to move
        return values
    if _settle(found, spec.run_dir, piece.workdir):
        values = _relocate(values, where, piece.workdir, plan)
    return values


def _run_slice(
    spec: AttemptSpec,
    piece: SliceInput,
    plan: PortPlan,
    where: str,
    capture_fds: bool,
    stage: str | None,
) -> dict[str, Any]:
    op: OP = spec.op
    inputs = piece.inputs
    # The common case, checked in one pass: no artifact ports, and every value of exactly its
    # port's declared class (so no default to fill in, and no BigValue to load: no port
    # declares that internal class, though a list or dict may hold some, see _has_big). The
    # inputs are then passed as given, as check_opio would pass them: the call below unpacks
    # (or OPIO-wraps) them into a new dict.
    if plan.in_artifacts or not exactly_typed(plan.in_types, inputs):
        inputs = own_inputs(_check_inputs(plan, piece, spec.store, where))
    elif not plan.in_immutable:
        if _stored.any_big and _has_big(inputs):
            inputs = load_big(inputs, spec.store)
        inputs = own_inputs(inputs)
    ctx = _context(spec, piece, where, None if capture_fds else piece.workdir)
    token = _current.set(ctx)
    try:
        if capture_fds:
            with fd_capture(piece.workdir, stage):
                result = _execute(op, inputs)
        else:
            result = _execute(op, inputs)
    finally:
        _current.reset(token)
        if ctx.log is not None:
            ctx.log.close()
    fresh = type(op) is FunctionOP  # then _execute made a new plain dict
    if fresh and not plan.out_artifacts and exactly_typed(plan.out_types, result):
        values: dict[str, Any] = result  # as check_opio(copy=False) would give it
        return values
    return _check_outputs(plan, result, piece, where, fresh)


# Values of these exact classes are never awaitable: no need to ask inspect.isawaitable(),
# whose ABC check costs more than a no-op OP.
_NOT_AWAITABLE = frozenset({int, float, str, bytes, bool, type(None), dict, list, tuple})


def _execute(op: OP, inputs: dict[str, Any]) -> Any:
    """The OP's outputs: a new plain dict for plain function OPs, else what execute() gave."""
    if type(op) is FunctionOP:  # exactly: adapters subclass it and override execute()
        value = op.fn(**inputs)  # no OPIO built only to be unpacked again
        if type(value) not in _NOT_AWAITABLE and inspect.isawaitable(value):
            value = asyncio.run(_await(value))
        return op._outputs_of(value)
    result = op.execute(OPIO(inputs))
    if type(result) not in _NOT_AWAITABLE and inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def arun_attempt(spec: AttemptSpec) -> AttemptOutcome:
    """Run an ``async def`` OP's slices in the calling event loop (no cwd change)."""
    start = time.perf_counter()
    op: OP = spec.op
    outputs: list[dict[str, Any]] = []
    try:
        plan = port_plan(op)
        route_std_streams()
        # exactly FunctionOP: subclasses (adapters) may override execute()
        function_op = op if type(op) is FunctionOP else None
        io = spec.store is not None and (plan.in_artifacts or plan.out_artifacts or plan.out_big)
        # the library's own thread tokens, not the application's (looked up once per attempt,
        # and only by one that hands artifact work to threads)
        threads = io_limiter() if io else None
        for piece in spec.slices:
            exact = not plan.in_artifacts and exactly_typed(plan.in_types, piece.inputs)
            # (values exactly of immutable classes hold no BigValue: see _run_slice)
            big = not (exact and plan.in_immutable) and _stored.any_big and _has_big(piece.inputs)
            if exact and not big:  # the common case, checked in one pass as in _run_slice
                inputs = piece.inputs
            elif io or big:  # fetching files, hashing, loading values: never in the loop
                if threads is None:
                    threads = io_limiter()
                inputs = await anyio.to_thread.run_sync(
                    _check_inputs, plan, piece, spec.store, limiter=threads
                )
            elif plan.in_artifacts:  # no store: the paths as given
                inputs = _check_inputs(plan, piece)
            else:
                # no copy: the call below unpacks (or OPIO-wraps) the dict into a new one
                inputs = check_opio(
                    plan.inputs, piece.inputs, op=plan.name, direction="input", copy=False
                )
            if not (exact and plan.in_immutable):  # values the OP could change in place
                inputs = own_inputs(inputs)
            ctx = _context(spec, piece, piece.workdir, piece.workdir)
            token = _current.set(ctx)
            try:
                if function_op is not None:  # skip execute()'s wrapper coroutine
                    value = function_op.fn(**inputs)
                    if function_op._is_async or inspect.isawaitable(value):
                        value = await value
                    result = function_op._outputs_of(value)
                    fresh = True
                else:
                    fresh = False
                    result = op.execute(OPIO(inputs))
                    if inspect.isawaitable(result):
                        result = await result
            finally:
                _current.reset(token)
                if ctx.log is not None:
                    ctx.log.close()
            if fresh and not plan.out_artifacts and exactly_typed(plan.out_types, result):
                values = result  # as _check_outputs would keep it (see _run_slice)
            else:
                values = _check_outputs(plan, result, piece, None, fresh)
            if io:
                values = await anyio.to_thread.run_sync(
                    _commit_outputs, spec, plan, values, piece.workdir, limiter=threads
                )
            outputs.append(values)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the attempt is being cancelled (timeout, the run's cancellation)
        return failure_from_exception(exc, time.perf_counter() - start)  # the OP raised it
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # as run_attempt
        return _failed(spec, len(outputs), exc, time.perf_counter() - start)
    return Succeeded(tuple(outputs), time.perf_counter() - start)


#: set in process-pool workers, whose inputs arrive unpickled: copies of their own already
INPUTS_ARE_PRIVATE = False


def own_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with private copies of the values an OP could change in place (lists, dicts,
    objects). In this process an OP would otherwise get the very objects that are another
    step's recorded outputs, a literal of the workflow, or a loaded BigParameter shared with
    other consumers: an OP appending to its input list (or a failing one clearing it) changed
    what its producer had recorded, in the journal too, and what a retry would see."""
    if INPUTS_ARE_PRIVATE:
        return inputs
    copied: dict[str, Any] | None = None
    for name, value in inputs.items():
        if type(value) in IMMUTABLE or isinstance(value, PurePath):
            continue
        if copied is None:
            copied = dict(inputs)
        copied[name] = copy.deepcopy(value)
    return inputs if copied is None else copied


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _context(
    spec: AttemptSpec, piece: SliceInput, where: str, log_workdir: str | None
) -> StepContext:
    """The attempt's context; printed output goes to ``log_workdir``'s log (None: the file
    descriptors are captured instead), opened on the first write."""
    # positional: keywords cost more than the rest of this call
    return StepContext(
        where, spec.step, spec.key, spec.attempt, piece.index, spec.run_id, None, log_workdir
    )


def _has_big(values: dict[str, Any]) -> bool:
    """Whether an input is a BigValue, or a list or dict holding one (a fan-out's stacked
    BigParameter outputs). Callers ask only once ``_stored.any_big`` says one may exist."""
    # a loop, not any(<generator>): this runs per attempt, and the generator costs more
    for v in values.values():
        t = type(v)
        if t is BigValue or ((t is list or t is dict or t is tuple) and holds_big(v)):
            return True
    return False


def _check_inputs(
    plan: PortPlan, piece: SliceInput, store: Any = None, where: str | None = None
) -> dict[str, Any]:
    given = piece.inputs
    if _stored.any_big and _has_big(given):
        given = load_big(given, store)
    # a copy only where artifact ports are about to be replaced in it
    mutated = bool(plan.in_artifacts) and given is piece.inputs
    values = check_opio(plan.inputs, given, op=plan.name, direction="input", copy=mutated)
    for name in plan.in_artifacts:
        if values.get(name) is not None:
            if store is None:
                values[name] = _as_paths(values[name])
            else:  # fetched (verified) from the store, each port in its own directory
                dest = Path(where or piece.workdir, ".inputs", name)
                values[name] = materialise(values[name], store, dest)
    return values


def _as_paths(value: Any) -> Any:
    if value is None:  # a failed slice's hole in a stacked list
        return None
    if isinstance(value, dict):
        return {k: _as_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_paths(v) for v in value]
    return Path(value)


def _check_outputs(
    plan: PortPlan, result: Any, piece: SliceInput, where: str | None = None, fresh: bool = False
) -> dict[str, Any]:
    """Checked outputs; ``fresh``: ``result`` is a new dict nobody else holds (kept as is)."""
    if result is None:
        result = {}
    if not isinstance(result, dict):
        raise SignatureError(
            f"OP {plan.name!r} must return an OPIO (a dict of outputs), got {type(result).__name__}"
        )
    values = check_opio(plan.outputs, result, op=plan.name, direction="output", copy=not fresh)
    if plan.out_artifacts:
        workdir = Path(where or piece.workdir)
        inputs = _input_artifact_paths(plan, piece)
        in_cwd = where is not None  # else an async OP: the loop's directory is not its own
        for name in plan.out_artifacts:
            if values.get(name) is not None:
                values[name] = _commit_paths(values[name], workdir, inputs, plan.name, name, in_cwd)
    return values


def _input_artifact_paths(plan: PortPlan, piece: SliceInput) -> set[str]:
    found: set[str] = set()
    for name in plan.in_artifacts:
        found.update(os.path.realpath(p) for p in artifact_paths(piece.inputs.get(name)))
    return found


def _commit_paths(
    value: Any, workdir: Path, inputs: set[str], op: str, port: str, in_cwd: bool = True
) -> Any:
    """Absolute, checked paths: inside the work dir, or an input passed through unchanged.
    ``in_cwd``: whether the OP ran with its work dir as the current directory."""
    if isinstance(value, dict):
        return {k: _commit_paths(v, workdir, inputs, op, port, in_cwd) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_commit_paths(v, workdir, inputs, op, port, in_cwd) for v in value]
    path = Path(value)
    relative = not path.is_absolute()
    if relative:
        path = workdir / path
    real = os.path.realpath(path)
    root = os.path.realpath(workdir)
    if not (real == root or real.startswith(root + os.sep)) and real not in inputs:
        raise ArtifactError(
            f"OP {op!r} output artifact {port!r} points at {str(value)!r}, outside its "
            f"work directory {str(workdir)!r}: write outputs under the current directory "
            f"(or current_context().workdir) and return relative paths"
        )
    if not os.path.lexists(real):
        if relative and not in_cwd:
            # the likely cause: a relative write from an async OP landed elsewhere
            raise ArtifactError(
                f"OP {op!r} output artifact {port!r}: {str(value)!r} is not in its work "
                f"directory {str(workdir)!r}. An async def OP shares the event loop's thread, "
                "so its current directory is the process's, not its work directory: write to "
                f"current_context().workdir / {str(value)!r} (or make it a plain def OP, "
                "which runs in its work directory)"
            )
        raise ArtifactError(
            f"OP {op!r} output artifact {port!r}: {str(path)!r} does not exist; "
            "the OP must create it before returning"
        )
    return Path(real)


def _commit_outputs(
    spec: AttemptSpec, plan: PortPlan, values: dict[str, Any], workdir: str
) -> dict[str, Any]:
    """Commit output artifacts to the store: only then may a consumer see them. The slice's
    ``workdir`` holds what it wrote (its other outputs are inputs passed through)."""
    if spec.store is not None:
        for name in plan.out_artifacts:
            if values.get(name) is not None:
                values[name] = commit(values[name], spec.store, spec.step, workdir)
        if plan.out_big:
            store_big(values, plan.out_big, spec.store, spec.step)
    return values


def failure_from_exception(exc: BaseException, duration: float = 0.0) -> Failed:
    text = f"{type(exc).__name__}: {exc}"
    tb = _user_traceback(exc)
    if isinstance(exc, InputFetchError):  # missing or corrupt input: before the OP body ran
        return Failed(kind="infra", error=text, traceback=tb, retryable=True, duration=duration)
    if isinstance(exc, TransientError):
        return Failed(kind="transient", error=text, traceback=tb, retryable=True, duration=duration)
    if isinstance(exc, FatalError | SignatureError | ArtifactError):
        return Failed(kind="fatal", error=text, traceback=tb, retryable=False, duration=duration)
    return Failed(kind="user", error=text, traceback=tb, retryable=False, duration=duration)


def _user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback from where it left this module: the OP's frames (and the sign
    checks'), without the attempt machinery's own above them."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__ and tb.tb_next:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


@contextmanager
def _in_dir(workdir: str, chdir: bool) -> Iterator[None]:
    if not chdir:
        yield  # the OP finds its directory through current_context().workdir (made lazily)
        return
    ensure_dir(workdir)
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(previous)


class _Scratch:
    """A thread's (or process's) scratch directory, held open and reused while the attempts
    run in it leave it empty."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str) -> None:
        ensure_dir(path)
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        self.mark_empty()

    def mark_empty(self) -> None:
        # An mtime no directory keeps once touched: creating, removing or renaming an entry
        # sets its mtime to "now" on every filesystem. So one fstat tells whether an attempt
        # left anything, whatever the clock's granularity; a listing costs three syscalls.
        os.utime(self.fd, ns=(0, 0))

    def untouched(self) -> bool:
        return os.fstat(self.fd).st_mtime_ns == 0

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    # a worker thread's locals go when it ends (the inline executor's threads end with the
    # run): its descriptor must go with them
    __del__ = close


_scratch = threading.local()
_scratch_count = itertools.count()
_SCRATCH_KEPT = 4  # run directories a thread keeps a scratch directory open for


def _scratch_dir(run_dir: str) -> _Scratch:
    """This thread's empty scratch directory under the run (one mkdir, reused while empty)."""
    dirs: dict[str, _Scratch] | None = getattr(_scratch, "dirs", None)
    if dirs is None:
        dirs = _scratch.dirs = {}
    found = dirs.get(run_dir)
    if found is None:
        if len(dirs) >= _SCRATCH_KEPT:  # a long-lived thread serving run after run
            dirs.pop(next(iter(dirs))).close()
        ident = f"{os.getpid()}-{threading.get_ident()}-{next(_scratch_count)}"
        found = dirs[run_dir] = _Scratch(f"{run_dir}/.scratch/{ident}")
    return found


def _forget_scratch_dirs() -> None:
    # a forked child must not share its parent thread's scratch directories
    dirs: dict[str, _Scratch] = getattr(_scratch, "dirs", None) or {}
    for found in dirs.values():
        found.close()
    dirs.clear()


os.register_at_fork(after_in_child=_forget_scratch_dirs)


def _settle(scratch: _Scratch, run_dir: str, workdir: str, *, quiet: bool = False) -> bool:
    """:func:`_adopt`; a scratch directory that could not be emptied is never reused.
    ``quiet``: the attempt already failed, and its own error is the one to report."""
    try:
        return _adopt(scratch, run_dir, workdir)
    except OSError:
        scratch.close()
        if _scratch.dirs.get(run_dir) is scratch:
            del _scratch.dirs[run_dir]
        if quiet:
            return False
        raise


def _adopt(scratch: _Scratch, run_dir: str, workdir: str) -> bool:
    """Move what an attempt left in its scratch directory to its work dir (one rename).
    Returns False when it left nothing, so the scratch directory serves the next attempt."""
    if scratch.untouched():
        return False
    with os.scandir(scratch.path) as entries:
        if next(entries, None) is None:  # touched, but left empty
            scratch.mark_empty()
            return False
    ensure_dir(os.path.dirname(workdir))
    if os.path.exists(workdir):  # a rerun of the same attempt name: keep the newest
        shutil.rmtree(workdir)
    os.rename(scratch.path, workdir)
    scratch.close()
    _scratch.dirs.pop(run_dir, None)
    return True


def _relocate(values: dict[str, Any], old: str, new: str, plan: PortPlan) -> dict[str, Any]:
    """Output artifact paths that pointed into the scratch directory, now in the work dir."""
    old_root = os.path.realpath(old)

    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [move(v) for v in value]
        text = str(value)
        if text == old_root or text.startswith(old_root + os.sep):
            return Path(new + text[len(old_root) :])
        return value

    for name in plan.out_artifacts:
        if values.get(name) is not None:
            values[name] = move(values[name])
    return values


_CLONE_FS = 0x00000200
_owns_cwd = threading.local()


def thread_owns_cwd() -> bool:
    """Give the calling thread its own current directory (Linux ``unshare(CLONE_FS)``).

    After this, ``os.chdir`` in this thread moves neither the main thread nor other workers,
    so sync OPs in worker threads can run in their own work directories as they would in a
    process. Returns False where the platform does not allow it.
    """
    if getattr(_owns_cwd, "value", None) is None:
        ok = False
        if hasattr(os, "unshare"):  # Python 3.12+
            try:
                os.unshare(_CLONE_FS)
                ok = True
            except OSError:
                ok = False
        else:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                ok = libc.unshare(_CLONE_FS) == 0
            except (OSError, AttributeError):
                ok = False
        _owns_cwd.value = ok
    return bool(_owns_cwd.value)
