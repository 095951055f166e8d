"""The executor plugin interface.

An executor only moves an :class:`~dflow_async._spec.AttemptSpec` to a place that runs
:func:`dflow_async._worker.run_attempt` and brings the outcome back. Retries, timeouts, limits and
ordering live in the scheduler, so every executor behaves the same.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from dflow_async._spec import AttemptOutcome, AttemptSpec
from dflow_async.exceptions import ExecutorClosedError

__all__ = ["AttemptHandle", "Executor"]


@dataclass(eq=False, slots=True)
class AttemptHandle:
    """What ``submit`` returns; executors keep their own state in ``token``."""

    spec: AttemptSpec
    token: Any = None  # executor-private: a future, a worker slot, a pod name...


class Executor(ABC):
    """Base class of every executor. Use it as an async context manager.

    Subclasses implement :meth:`start`, :meth:`stop`, :meth:`submit`, :meth:`wait` and
    :meth:`cancel`; :meth:`check_op` and :meth:`reattach` have safe defaults.
    """

    #: The name users pass as ``executor=``; also the entry-point name.
    name: ClassVar[str]
    #: Attempts run in the driver's own process (so they see its memory:// filesystems).
    in_process: ClassVar[bool] = False

    _state: str = "new"  # new -> starting -> open -> closed
    _users = 0  # runs inside it now: the last one out closes it
    _opened_in: asyncio.AbstractEventLoop | None = None
    _ready: asyncio.Event | None = None  # set when a start() under way is over

    async def __aenter__(self) -> Self:
        # Several runs of one event loop may share an executor object (an application's
        # concurrent arun() calls): it starts once and closes when the last of them is over.
        loop = asyncio.get_running_loop()
        while self._state != "open":
            refusal = self._unusable_from(loop)
            if refusal is not None:
                raise ExecutorClosedError(refusal)
            if self._state == "starting":
                assert self._ready is not None
                await self._ready.wait()  # then: open, or new again if start() failed
                continue
            self._state, self._opened_in = "starting", loop
            ready = self._ready = asyncio.Event()
            try:
                await self.start()
            except BaseException:
                self._state = "new"
                raise
            finally:
                ready.set()
            self._state = "open"
        refusal = self._unusable_from(loop)
        if refusal is not None:
            raise ExecutorClosedError(refusal)
        self._users += 1
        return self

    def _unusable_from(self, loop: asyncio.AbstractEventLoop | None) -> str | None:
        """Why a run in ``loop`` cannot use this executor object (None: it can; ``loop`` None:
        whatever loop the run will have). Asked by validation too, before a run has a
        journal that a refusal in ``__aenter__`` would leave behind as Interrupted."""
        if self._state == "closed":
            return (
                f"the {self.name!r} executor object was closed at the end of an earlier run, "
                "and an executor object serves the runs it is open for: give this run a new "
                f"one (run(executor=...)), or its name (executor={self.name!r})"
            )
        if loop is not None and self._state != "new" and self._opened_in is not loop:
            # its threads, futures and pipes belong to the loop that started it
            return (
                f"the {self.name!r} executor object is in use by a run in another event loop "
                "(another thread): an executor object serves the runs of one loop at a time; "
                f"give this run its own (run(executor=...)), or its name "
                f"(executor={self.name!r})"
            )
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._users -= 1
        if self._users <= 0:
            await self.aclose()

    async def aclose(self) -> None:
        """Cancel whatever is still running and release resources. Idempotent."""
        if self._state == "open":
            self._state = "closed"
            await self.stop()
        self._state = "closed"

    def _ensure_open(self) -> None:
        if self._state != "open":
            raise ExecutorClosedError(
                f"The {self.name!r} executor is not open: use it inside 'async with executor:'."
            )

    @abstractmethod
    async def start(self) -> None:
        """Acquire resources (pools, clients)."""

    @abstractmethod
    async def stop(self) -> None:
        """Kill outstanding attempts and release resources; leave no process behind."""

    @abstractmethod
    async def submit(self, spec: AttemptSpec) -> AttemptHandle:
        """Start the attempt and return at once."""

    @abstractmethod
    async def wait(self, handle: AttemptHandle) -> AttemptOutcome:
        """The attempt's outcome. Worker deaths come back as ``Failed(kind="infra")``."""

    @abstractmethod
    async def cancel(self, handle: AttemptHandle) -> None:
        """Stop the attempt (kill its process where there is one). Idempotent."""

    async def started(self, handle: AttemptHandle) -> None:
        """Return once the attempt has begun to run (or has ended). A step's ``timeout``
        counts from here, so time spent queued for a free worker is not held against it.
        The default, for executors that start what they are given at once: at once."""
        return

    async def reattach(self, handle: AttemptHandle) -> AttemptHandle | None:
        """Find an attempt started by an earlier driver; ``None`` when it cannot be found."""
        return None

    def check_op(self, op: Any) -> str | None:
        """A sentence saying why this executor cannot run ``op``, or ``None`` when it can."""
        return None

    def can_stop(self, spec: AttemptSpec) -> bool:
        """Whether :meth:`cancel` really stops this attempt (a timed-out step's message says
        so, and what to do when it cannot). Override where some attempts run on."""
        return True

    async def run(self, spec: AttemptSpec) -> AttemptOutcome:
        """Submit, wait, and cancel the attempt if the waiting task is cancelled."""
        handle = await self.submit(spec)
        try:
            return await self.wait(handle)
        except BaseException:
            import anyio

            with anyio.CancelScope(shield=True):
                await self.cancel(handle)
            raise
