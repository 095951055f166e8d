"""Executors: where attempts run. Built-ins: ``inline`` and ``process``; plugins register
through the ``dflow_async.executors`` entry-point group."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dflow_async.executors._base import AttemptHandle, Executor
from dflow_async.executors._inline import InlineExecutor
from dflow_async.executors._registry import available_executors, executor_class, make_executor

if TYPE_CHECKING:
    from dflow_async.executors._process import ProcessExecutor

__all__ = [
    "AttemptHandle",
    "Executor",
    "InlineExecutor",
    "ProcessExecutor",
    "available_executors",
    "executor_class",
    "make_executor",
]


def __getattr__(name: str) -> Any:
    if name == "ProcessExecutor":
        from dflow_async.executors._process import ProcessExecutor

        return ProcessExecutor
    raise AttributeError(name)
