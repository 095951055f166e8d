"""Finding executors by name: built-ins first, then the ``dflow_async.executors`` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from dflow_async.exceptions import ExecutorNotFoundError
from dflow_async.executors._base import Executor

__all__ = ["available_executors", "describe_executors", "executor_class", "make_executor"]

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
        builtin: type[Executor] = getattr(importlib.import_module(module), cls)
        return builtin
    found = _registered(name)
    if len(found) > 1:
        # which one a name means would depend on sys.path order: refuse, naming both
        owners = ", ".join(f"{_dist(ep)} ({ep.value})" for ep in found)
        raise ExecutorNotFoundError(
            f"executor {name!r} is registered by more than one installed distribution: "
            f"{owners}; uninstall all but one"
        )
    if found:
        (ep,) = found
        try:
            loaded = ep.load()
        except Exception as exc:
            # a plugin whose module is gone, misspelt, or needs a backend that is not
            # installed: a validation problem naming the plugin, not a traceback from
            # importlib in the middle of the run's setup
            raise ExecutorNotFoundError(
                f"executor {name!r} (entry point {ep.value!r} of {_dist(ep)}) could not be "
                f"loaded: {type(exc).__name__}: {exc}"
            ) from exc
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


def _registered(name: str) -> list[Any]:
    """The entry points registering ``name``, one per distribution (a distribution found
    twice on sys.path, e.g. installed and editable, counts once)."""
    by_dist: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            by_dist.setdefault(_dist(ep), ep)
    return list(by_dist.values())


def _dist(ep: Any) -> str:
    return str(ep.dist.name) if ep.dist is not None else "an unknown distribution"


def describe_executors() -> list[tuple[str, str, str | None]]:
    """``(name, where it comes from, problem or None)`` for every executor installed here,
    each plugin loaded to see that it can be (what `dflow-async executors` prints)."""
    rows: list[tuple[str, str, str | None]] = []
    for name in available_executors():
        if name in _BUILTIN:
            source = "built-in"
            shadowing = [_dist(ep) for ep in _registered(name)]
            problem = (
                f"a plugin of this name in {', '.join(shadowing)} is ignored" if shadowing else None
            )
        else:
            source = ", ".join(_dist(ep) for ep in _registered(name))
            try:
                executor_class(name)
                problem = None
            except ExecutorNotFoundError as exc:
                problem = str(exc)
        rows.append((name, source, problem))
    return rows


def make_executor(spec: Any) -> Executor:
    """An executor from a name or an Executor instance (used as given)."""
    if isinstance(spec, Executor):
        return spec
    if isinstance(spec, str):
        cls = executor_class(spec)
        try:
            return cls()
        except Exception as exc:
            # e.g. a plugin that connects to its cluster when built and cannot: reported with
            # the workflow's other problems, before the run; settings that a name cannot carry
            # go in an instance (executor=DaskExecutor(address=...))
            raise ExecutorNotFoundError(
                f"executor {spec!r} ({cls.__module__}.{cls.__qualname__}) could not be created "
                f"with its default settings: {type(exc).__name__}: {exc}"
            ) from exc
    raise TypeError(f"executor= takes a name or an Executor instance, got {spec!r}")
