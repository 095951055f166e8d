"""``dflow.plugins.dispatcher``: DPDispatcher runs steps on HPC; refused when used."""

from __future__ import annotations

from dflow_async.dflow._unsupported import refusing_class

__all__ = ["DispatcherExecutor"]

DispatcherExecutor = refusing_class(
    "plugins.dispatcher.DispatcherExecutor",
    "choose a dflow-async executor: Workflow(executor=...) or config['executor']",
)
