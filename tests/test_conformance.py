"""The built-in executors pass the public conformance suite that plugins subclass."""

from __future__ import annotations

from dflow_async.executors import InlineExecutor, ProcessExecutor
from dflow_async.testing import ExecutorConformance


class TestInlineExecutor(ExecutorConformance):
    def make_executor(self) -> InlineExecutor:
        return InlineExecutor()


class TestProcessExecutor(ExecutorConformance):
    isolates_processes = True

    def make_executor(self) -> ProcessExecutor:
        return ProcessExecutor(max_workers=2)
