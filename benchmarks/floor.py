"""The floor: the least a DAG scheduler can do in pure Python.

``run_async`` is what any asyncio scheduler must at least do (one task per node, driven by
``graphlib``); ``run_sync`` calls plain functions in topological order, the absolute floor;
``run_threaded`` is the floor for plain functions kept off the event loop, on a worker thread.
Each node receives its parents' results as positional arguments, like dask.delayed.
"""

from __future__ import annotations

import asyncio
import queue
import threading
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


def run_threaded(graph: Graph, fn: Callable[..., Any]) -> dict[Any, Any]:
    """Plain functions on one worker thread, scheduled by an asyncio loop, the best such a
    scheduler can do: every ready node goes over in one batch, all its results come back in
    one wake-up. Wide graphs pay a hand-off per batch; a chain still pays one loop -> thread
    -> loop round trip per node, which no batching removes."""
    return asyncio.run(_run_threaded(graph, fn))


async def _run_threaded(graph: Graph, fn: Callable[..., Any]) -> dict[Any, Any]:
    loop = asyncio.get_running_loop()
    ts = TopologicalSorter(graph)
    ts.prepare()
    results: dict[Any, Any] = {}
    jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
    landed: asyncio.Queue[list[tuple[Any, Any]] | BaseException] = asyncio.Queue()

    def work() -> None:
        while (batch := jobs.get()) is not None:
            try:
                out: Any = [(n, fn(*[results[p] for p in graph[n]])) for n in batch]
            except BaseException as exc:  # surface it in the driver instead of hanging
                out = exc
            loop.call_soon_threadsafe(landed.put_nowait, out)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while ts.is_active():
            ready = ts.get_ready()
            if ready:
                jobs.put(ready)
            out = await landed.get()
            if isinstance(out, BaseException):
                raise out
            for node, value in out:
                results[node] = value
                ts.done(node)
    finally:
        jobs.put(None)
        thread.join()
    return results
