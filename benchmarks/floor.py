"""The floor: the least a DAG scheduler can do in pure Python.

``run_async`` is what any asyncio scheduler must at least do (one task per node, driven by
``graphlib``); ``run_sync`` calls plain functions in topological order, the absolute floor.
Each node receives its parents' results as positional arguments, like dask.delayed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from graphlib import TopologicalSorter
from typing import Any

Graph = dict[Any, list[Any]]


async def _run_async(graph: Graph, fn: Callable[..., Awaitable[Any]]) -> dict[Any, Any]:
    ts = TopologicalSorter(graph)
    ts.prepare()
    results: dict[Any, Any] = {}
    errors: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []  # the loop holds tasks weakly: keep them alive
    wake = asyncio.Event()

    async def run(node: Any) -> None:
        try:
            results[node] = await fn(*[results[p] for p in graph[node]])
            ts.done(node)
        except BaseException as exc:  # surface it in the driver instead of hanging
            errors.append(exc)
        wake.set()

    while ts.is_active():
        tasks.extend(asyncio.create_task(run(node)) for node in ts.get_ready())
        await wake.wait()
        wake.clear()  # safe: get_ready() runs after clear(), so no completion is missed
        if errors:
            raise errors[0]
    return results


def run_async(graph: Graph, fn: Callable[..., Awaitable[Any]]) -> dict[Any, Any]:
    """Blocking, like ``Workflow.run()``: the event loop's start-up is part of the cost."""
    return asyncio.run(_run_async(graph, fn))


def run_sync(graph: Graph, fn: Callable[..., Any]) -> dict[Any, Any]:
    ts = TopologicalSorter(graph)
    ts.prepare()
    results: dict[Any, Any] = {}
    while ts.is_active():
        for node in ts.get_ready():
            results[node] = fn(*[results[p] for p in graph[node]])
            ts.done(node)
    return results
