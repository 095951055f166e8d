"""The worker-process side of :class:`~dflow_async.executors._process.ProcessExecutor`.

A worker receives one cloudpickled :class:`~dflow_async._spec.AttemptSpec` at a time over its
pipe, runs it with :func:`~dflow_async._worker.run_attempt` and sends back the cloudpickled
outcome. It never raises into the pipe: whatever goes wrong becomes a ``Failed`` value.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import struct
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import cloudpickle

from dflow_async._codec import type_label
from dflow_async._spec import AttemptSpec, Failed, FailureKind, Succeeded

__all__ = [
    "UNGUARDED_MAIN_EXIT",
    "exit_unguarded_main",
    "frame_messages",
    "lost_outcome",
    "unguarded_main_outcome",
    "worker_main",
]

_PR_SET_PDEATHSIG = 1

#: The exit status of a worker process whose import of the main script ran a workflow (the
#: script has no ``if __name__ == "__main__":``): the driver tells it from other deaths.
UNGUARDED_MAIN_EXIT = 86


def worker_main(conn: Connection) -> None:
    """Serve attempts until the driver closes the pipe (or kills this process)."""
    _detach()
    import dflow_async._worker

    dflow_async._worker.INPUTS_ARE_PRIVATE = True  # unpickled: nobody else holds them
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        reply = _serve(data)
        try:
            conn.send_bytes(reply)
        except OSError:
            return


def exit_unguarded_main() -> NoReturn:
    """Called by ``Workflow.run`` when it finds itself inside a new process importing the main
    script (multiprocessing's spawn and forkserver children do, before they start working): the
    script runs its workflow at import time, and every worker would run it again. Say so, and
    end the process with the status the driver recognises."""
    main = sys.modules.get("__mp_main__")
    script = getattr(main, "__file__", None) or "the main script"
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write(f"dflow-async: error in worker process {os.getpid()}: ")
        sys.stderr.write(_unguarded(script) + "\n")
        sys.stderr.flush()
    os._exit(UNGUARDED_MAIN_EXIT)  # an exception would only be printed, and the status lost


def _unguarded(script: str) -> str:
    return (
        f"{script} runs a workflow when it is imported, and worker processes import the main "
        "script before they start: each of them would run the whole workflow again. Put the "
        'code that runs the workflow under `if __name__ == "__main__":`'
    )


def unguarded_main_outcome(pid: int | None) -> Failed:
    """The driver's side: a worker ended with UNGUARDED_MAIN_EXIT (None: no worker is started
    any more, for that reason)."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None) or "the main script"
    who = "no worker process can start" if pid is None else f"worker process {pid} stopped"
    error = f"{who}: {_unguarded(script)}"
    return Failed(kind="fatal", error=error, retryable=False)


def _detach() -> None:
    # Own session and process group: the driver kills the whole group, and with it every
    # subprocess the OP started; the terminal's Ctrl-C reaches the driver only.
    with contextlib.suppress(OSError):
        os.setsid()
    # A no-op handler rather than SIG_IGN: exec'd subprocesses get the default back.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    if sys.platform.startswith("linux"):  # die with our parent (the driver or its fork server)
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    # A fork server's children inherit its "driver alive" fd, which would keep the server
    # (our parent) alive after the driver died; we never use that fd.
    with contextlib.suppress(Exception):
        from multiprocessing import forkserver

        server: Any = forkserver._forkserver
        if server._forkserver_pid is None and server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
            server._forkserver_alive_fd = None
    # The driver may die (even by SIGKILL) while an attempt runs: take the whole process
    # group down with it, subprocesses included. The sentinel is EOF once the driver is gone.
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        watch = threading.Thread(
            target=_watch_driver, args=(parent.sentinel,), name="dflow-driver-watch", daemon=True
        )
        watch.start()


def _watch_driver(sentinel: int) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])
    if os.getpgid(0) == os.getpid():  # we lead our own group: never signal the driver's
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _serve(data: bytes) -> bytes:
    from dflow_async._worker import failure_from_exception, run_attempt

    outcome: Any
    spec: Any = None
    try:
        spec = cloudpickle.loads(data)
    except Exception as exc:
        outcome = Failed(
            kind="fatal",
            error=(
                f"the attempt could not be unpickled in the worker process "
                f"({type(exc).__name__}: {exc}); make sure the OP's module is importable there "
                "or use executor='inline'"
            ),
            traceback=traceback.format_exc(),
        )
    else:
        try:
            outcome = run_attempt(spec, chdir=True, capture_fds=True)
        except BaseException as exc:  # SystemExit/KeyboardInterrupt raised by the OP itself
            outcome = failure_from_exception(exc)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return _dump_outcome(outcome, spec)


def _dump_outcome(outcome: Any, spec: Any = None) -> bytes:
    try:
        return bytes(cloudpickle.dumps(outcome))
    except Exception as exc:
        error = (
            f"the outcome could not be pickled to send it back from the worker process "
            f"({type(exc).__name__}: {exc})"
        )
        tb = traceback.format_exc()
    kind: FailureKind = "infra"
    if isinstance(outcome, Succeeded):
        for position, outputs in enumerate(outcome.outputs):
            for name, value in outputs.items():
                try:
                    cloudpickle.dumps(value)
                except Exception as exc:
                    step = "the step" if spec is None else f"step {spec.step!r}"
                    index = None if spec is None else spec.slices[position].index
                    if index is not None:
                        step += f" (slice {index})"
                    what = type_label(value)
                    error = (
                        f"{step} returned a value of type {what} "
                        f"for its output {name!r}, which could not be pickled to send it "
                        f"back from the worker process ({type(exc).__name__}: {exc}). Return "
                        "picklable values (plain data, dataclasses, arrays), or write files and "
                        "return their paths through an Artifact output (executor='inline' "
                        "takes unpicklable values only in a run with journal=False, which "
                        "cannot be resumed)"
                    )
                    tb = traceback.format_exc()
                    kind = "user"
                    break
            if kind == "user":
                break
    duration = getattr(outcome, "duration", 0.0)
    failed = Failed(kind=kind, error=error, traceback=tb, retryable=False, duration=duration)
    return bytes(cloudpickle.dumps(failed))


# -- used by the driver -------------------------------------------------------------------


def frame_messages(buf: bytearray) -> list[bytes]:
    """Remove and return the complete messages at the front of ``buf``.

    The framing is ``multiprocessing.Connection.send_bytes``'s: a ``!i`` length, or ``-1``
    followed by a ``!Q`` length for messages of 2 GiB and more.
    """
    messages = []
    while len(buf) >= 4:
        (size,) = struct.unpack_from("!i", buf)
        start = 4
        if size == -1:
            if len(buf) < 12:
                break
            (size,) = struct.unpack_from("!Q", buf, 4)
            start = 12
        if len(buf) < start + size:
            break
        messages.append(bytes(buf[start : start + size]))
        del buf[: start + size]
    return messages


def lost_outcome(spec: AttemptSpec, pid: int, code: int | None) -> Failed:
    if code == UNGUARDED_MAIN_EXIT:
        return unguarded_main_outcome(pid)
    if code is None:
        how = "vanished and its exit status is unknown"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        how = f"was killed by signal {-code} ({name})"
    else:
        how = f"exited with code {code}"
    error = (
        f"the worker process (pid {pid}) running attempt {spec.attempt_id!r} {how} before "
        "reporting an outcome"
    )
    return Failed(kind="infra", error=error, retryable=True)
