"""Executors: where attempts run. Built-ins: ``inline`` and ``process``; plugins register
through the ``dflow_async.executors`` entry-point group.

What a plugin needs is public here: the :class:`Executor` base class, the attempt it is
given (:class:`AttemptSpec`, one :class:`SliceInput` per slice), the function that runs one
anywhere (:func:`run_attempt`; :func:`thread_owns_cwd` first on driver threads) and the
outcome it brings back (:class:`Succeeded` or :class:`Failed`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dflow_async._spec import AttemptOutcome, AttemptSpec, Failed, SliceInput, Succeeded
from dflow_async._worker import run_attempt, thread_owns_cwd
from dflow_async.executors._base import AttemptHandle, Executor
from dflow_async.executors._inline import InlineExecutor
from dflow_async.executors._registry import available_executors, executor_class, make_executor

if TYPE_CHECKING:
    from dflow_async.executors._process import ProcessExecutor

__all__ = [
    "AttemptHandle",
    "AttemptOutcome",
    "AttemptSpec",
    "Executor",
    "Failed",
    "InlineExecutor",
    "ProcessExecutor",
    "SliceInput",
    "Succeeded",
    "available_executors",
    "executor_class",
    "make_executor",
    "run_attempt",
    "thread_owns_cwd",
]


def __getattr__(name: str) -> Any:
    if name == "ProcessExecutor":
        from dflow_async.executors._process import ProcessExecutor

        return ProcessExecutor
    raise AttributeError(name)
