"""``dflow.plugins.lebesgue``: Bohrium's Lebesgue executor; refused when used."""

from __future__ import annotations

from dflow_async.dflow._unsupported import refusing_class

__all__ = ["LebesgueExecutor"]

LebesgueExecutor = refusing_class(
    "plugins.lebesgue.LebesgueExecutor",
    "choose a dflow-async executor: Workflow(executor=...) or config['executor']",
)
