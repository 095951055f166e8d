"""Finding executors by name: built-ins first, then the ``dflow_async.executors`` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from dflow_async.exceptions import ExecutorNotFoundError
from dflow_async.executors._base import Executor

__all__ = ["available_executors", "executor_class", "make_executor"]

ENTRY_POINT_GROUP = "dflow_async.executors"

# name -> (module, class); imported on first use so `import dflow_async` stays light
_BUILTIN = {
    "inline": ("dflow_async.executors._inline", "InlineExecutor"),
    "process": ("dflow_async.executors._process", "ProcessExecutor"),
}
# executors we know of that ship as separate distributions
_KNOWN_PLUGINS = {
    "dask": "dflow-async-dask",
    "ray": "dflow-async-ray",
    "kubernetes": "dflow-async-kubernetes",
    "slurm": "dflow-async-slurm",
}


def available_executors() -> list[str]:
    """Names of every executor installed here."""
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def executor_class(name: str) -> type[Executor]:
    if name in _BUILTIN:
        import importlib

        module, cls = _BUILTIN[name]
        found: type[Executor] = getattr(importlib.import_module(module), cls)
        return found
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            loaded = ep.load()
            if not (isinstance(loaded, type) and issubclass(loaded, Executor)):
                raise ExecutorNotFoundError(
                    f"entry point {ep.value!r} for executor {name!r} is not an Executor subclass"
                )
            return loaded
    hint = ""
    if name in _KNOWN_PLUGINS:
        hint = f"; install it with: pip install {_KNOWN_PLUGINS[name]}"
    raise ExecutorNotFoundError(
        f"no executor named {name!r} is installed (installed: {', '.join(available_executors())})"
        f"{hint}"
    )


def make_executor(spec: Any) -> Executor:
    """An executor from a name or an Executor instance (used as given)."""
    if isinstance(spec, Executor):
        return spec
    if isinstance(spec, str):
        return executor_class(spec)()
    raise TypeError(f"executor= takes a name or an Executor instance, got {spec!r}")
