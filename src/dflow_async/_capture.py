"""Every attempt's stdout/stderr goes to ``<work dir>.log`` beside its work directory.

In a worker process the file descriptors themselves are redirected, so the output of programs
an OP starts (a simulation binary) is captured too. In threads and in the event loop the
descriptors are shared, so while runs are active ``sys.stdout``/``sys.stderr`` are replaced
by routers that send each write to the log of the attempt whose context is current (context
variables follow threads and asyncio tasks alike); writes outside an attempt go where they
always went, and anything else a router is asked is the replaced stream's answer. When the
last run ends, the streams are put back. The log (its object as well as its file) is made
on the first write, so quiet OPs cost nothing.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast

from dflow_async._op import StepContext, _current
from dflow_async._store_local import ensure_dir

__all__ = ["append_to_log", "capture_fds", "log_path", "route_std_streams", "std_streams_routed"]

_install_lock = threading.Lock()


def log_path(workdir: str) -> str:
    return workdir.rstrip("/") + ".log"


def append_to_log(workdir: str, text: str) -> None:
    """Add ``text`` to an attempt's log once the attempt is over (its traceback, when it
    failed): best effort, a log that cannot be written must not hide the failure itself."""
    path = log_path(workdir)
    try:
        ensure_dir(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(fd, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(text)
    except OSError:
        pass


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


class _Router:
    """Stands in for sys.stdout/sys.stderr: writes go to the current attempt's log; anything
    else is the original stream's own answer.

    Deliberately not an ``io.TextIOBase`` subclass (only registered as one, so that
    ``isinstance`` checks still pass): the base class answers ``writable()``, ``seekable()``,
    ``errors``, ``newlines``, ``closed``, ``close()``... for itself, with defaults that are
    not the stream's (a router's ``writable()`` was False), and its ``__del__`` closes the
    object, which, forwarded, would close the application's stream once a router is dropped.
    Here every attribute but ``write``/``writelines``/``flush`` is looked up on the original
    stream, so nothing needs to be listed (nor kept up with new Python versions). The cost:
    the router is not an instance of the original's own class (``io.TextIOWrapper``), and
    not the object ``sys.__stdout__``, which is why :func:`std_streams_routed` puts the
    original back when no run is active any more.
    """

    __slots__ = ("__weakref__", "_original")

    def __init__(self, original: TextIO | None) -> None:
        # None: a process without console streams; other than write() and flush(), the
        # router then answers as None does (AttributeError)
        object.__setattr__(self, "_original", original)

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

    def writelines(self, lines: Iterable[str]) -> None:
        ctx = _current.get(None)
        if ctx is None or ctx.log_workdir is None:
            if self._original is not None:
                self._original.writelines(lines)
            return
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        ctx = _current.get(None)
        if ctx is None or ctx.log_workdir is None:
            if self._original is not None:
                self._original.flush()
        elif ctx.log is not None:  # else nothing was written: nothing to flush
            ctx.log.flush()

    def __getattr__(self, name: str) -> Any:
        if name == "_original":  # not set yet: an object made by copy or pickle
            raise AttributeError(name)
        return getattr(self._original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_original":
            object.__setattr__(self, name, value)
        else:
            setattr(self._original, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._original, name)

    # special methods are looked up on the class, never through __getattr__
    def __enter__(self) -> _Router:
        self._original.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._original.__exit__(*exc)

    def __repr__(self) -> str:
        return f"<dflow_async stream router for {self._original!r}>"


io.TextIOBase.register(_Router)

_scopes = 0  # std_streams_routed() scopes active: the runs in progress


@contextmanager
def std_streams_routed() -> Iterator[None]:
    """The scope of a run: while any is active, :func:`route_std_streams` may put routers in
    place; when the last one ends, ``sys.stdout``/``sys.stderr`` are the streams they stood in
    for again (``sys.stdout is sys.__stdout__`` holds again, None is None again).

    Only routers are taken away: a stream the application put in place meanwhile stays (if
    a router was put around it since, that router goes), and so does an object of the
    application's that wraps a router (that router keeps forwarding to its stream). A thread
    printing meanwhile is not disturbed: a router it already holds keeps writing where it
    did (see ``_kept``), and outside an attempt that is the original stream anyway. Output
    of an attempt that outlives every run (a timed-out plain OP still running in its
    thread) then goes to the original stream rather than to its log, as output outside any
    run does."""
    global _scopes
    with _install_lock:
        _scopes += 1
    try:
        yield
    finally:
        with _install_lock:
            _scopes -= 1
            if _scopes == 0:
                sys.stdout = _unwrap(sys.stdout)
                sys.stderr = _unwrap(sys.stderr)


# Routers taken out of sys.stdout/sys.stderr are kept alive: print() in another thread may be
# between two writes to one it fetched from sys, and CPython's print() held only a borrowed
# reference to it until the fix of gh-130163 (2025; not in 3.11): a router freed meanwhile
# made that print() fail, or crash (seen: "AttributeError: _original" on a freed one). They
# are also the ones routing the same stream again, so the common case (every run routes
# sys.__stdout__) makes one router per stream for the life of the process, and an
# application that swaps its streams between runs keeps at most _KEEP routers (and the
# streams they stand in for) alive.
_KEEP = 8
_kept: collections.deque[_Router] = collections.deque(maxlen=_KEEP)


def _unwrap(stream: Any) -> Any:
    while type(stream) is _Router:
        if not any(kept is stream for kept in _kept):
            _kept.append(stream)
        stream = stream._original
    return stream


def _router(stream: TextIO | None) -> TextIO:
    for kept in _kept:
        if kept._original is stream:
            return cast(TextIO, kept)
    return cast(TextIO, _Router(stream))


def _install() -> None:
    with _install_lock:
        if type(sys.stdout) is not _Router:
            sys.stdout = _router(sys.stdout)
        if type(sys.stderr) is not _Router:
            sys.stderr = _router(sys.stderr)


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
