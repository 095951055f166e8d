"""Public testing helpers: the executor conformance suite every executor plugin runs.

::

    from dflow_async.testing import ExecutorConformance

    class TestMyExecutor(ExecutorConformance):
        isolates_processes = True        # attempts run in processes that can be killed
        def make_executor(self):
            return MyExecutor(...)
"""

from __future__ import annotations

from dflow_async.testing._conformance import ExecutorConformance

__all__ = ["ExecutorConformance"]
