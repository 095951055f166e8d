"""Every attempt's stdout/stderr goes to ``<work dir>.log`` beside its work directory.

In a worker process the file descriptors themselves are redirected, so the output of programs
an OP starts (a simulation binary) is captured too. In threads and in the event loop the
descriptors are shared, so ``sys.stdout``/``sys.stderr`` are replaced once by routers that send
each write to the log of the attempt whose context is current (context variables follow
threads and asyncio tasks alike); writes outside an attempt go where they always went. The
log (its object as well as its file) is made on the first write, so quiet OPs cost nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from dflow_async._op import StepContext, _current
from dflow_async._store_local import ensure_dir

__all__ = ["capture_fds", "log_path", "route_std_streams"]

_install_lock = threading.Lock()


def log_path(workdir: str) -> str:
    return workdir.rstrip("/") + ".log"


_open_lock = threading.Lock()  # opening a log: rare, so one lock for all of them


class _LazyLog:
    __slots__ = ("_fh", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: TextIO | None = None

    def write(self, text: str) -> int:
        fh = self._fh
        if fh is None:
            with _open_lock:  # threads the OP started may print at the same moment
                fh = self._fh
                if fh is None:
                    ensure_dir(os.path.dirname(self.path))
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    # kept open across writes until close(): a with-block cannot span them
                    fh = self._fh = open(fd, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115
        return fh.write(text)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class _Router(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: writes go to the current attempt's log."""

    def __init__(self, original: TextIO | None) -> None:
        # None: a process without console streams; other than write() and flush(), the
        # router then answers as None does (AttributeError)
        self._original: Any = original

    def write(self, text: str) -> int:
        ctx = _current.get(None)
        if ctx is None or ctx.log_workdir is None:  # outside an attempt, or fds captured
            original = self._original
            # None (pythonw, a service without a console): print() writes nothing there
            return original.write(text) if original is not None else len(text)
        log: _LazyLog | None = ctx.log
        if log is None:
            log = _attempt_log(ctx)
        return log.write(text)

    def flush(self) -> None:
        ctx = _current.get(None)
        if ctx is None or ctx.log_workdir is None:
            if self._original is not None:
                self._original.flush()
        elif ctx.log is not None:  # else nothing was written: nothing to flush
            ctx.log.flush()

    def fileno(self) -> int:
        fd: int = self._original.fileno()
        return fd

    def isatty(self) -> bool:
        tty: bool = self._original.isatty()
        return tty

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _install() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout)
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router(sys.stderr)


@contextmanager
def capture_fds(workdir: str, stage: str | None = None) -> Iterator[None]:
    """Worker processes: redirect file descriptors 1 and 2 (so child programs are captured
    too) into ``stage``, moved to the attempt's log only when something was written."""
    path = log_path(workdir)
    yield from _capture_fds(path, stage or path)


def route_std_streams() -> None:
    """Have ``sys.stdout``/``sys.stderr`` writes reach the log of the attempt (in a thread or
    the event loop, where descriptors are shared) whose :class:`StepContext` is current and
    has a ``log_workdir``. Call it before each attempt: anyone may have replaced the streams
    since (``contextlib.redirect_stdout``, a test's capture). The worker closes
    ``StepContext.log``, if it was opened, when the attempt ends."""
    if type(sys.stdout) is not _Router or type(sys.stderr) is not _Router:
        _install()


def _attempt_log(ctx: StepContext) -> _LazyLog:
    assert ctx.log_workdir is not None
    with _open_lock:  # threads the OP started may print at the same moment
        if ctx.log is None:
            ctx.log = _LazyLog(log_path(ctx.log_workdir))
        log: _LazyLog = ctx.log
    return log


def _capture_fds(path: str, stage: str) -> Iterator[None]:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: a process without console streams
            stream.flush()
    ensure_dir(os.path.dirname(stage))
    fd = os.open(stage, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        written = os.fstat(fd).st_size
        for f in (*saved, fd):
            os.close(f)
        if stage != path and written:
            ensure_dir(os.path.dirname(path))
            os.replace(stage, path)
