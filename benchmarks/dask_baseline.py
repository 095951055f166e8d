"""The same graphs through ``dask.delayed`` on the threaded scheduler.

Building the delayed graph and computing it are timed separately: building is plain
Python object churn that a user pays once, compute is the scheduler. Only compute is
compared with dflow-async's ``wf.run()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dask
from dask import delayed

Graph = dict[Any, list[Any]]

# dask's default graph optimisation (culling a graph of thousands of one-task layers) costs
# more than the scheduling itself: 6.7 s vs 0.7 s for 10k independent tasks, 2.4 s vs 1.0 s
# for the layered DAG. Off by default, to compare with Dask's scheduler at its best;
# ``--dask-optimize`` turns it back on.
OPTIMIZE_GRAPH = False


def _gather(*results: Any) -> int:
    return len(results)


def build(graph: Graph, fn: Callable[..., Any]) -> Any:
    """One Delayed that depends on every sink, so compute() sees a single collection.

    ``graph`` must be in topological order (shapes.py guarantees it). ``pure=False`` keeps
    dask from hashing arguments to name keys (uuid keys instead), its cheapest mode.
    """
    nodes: dict[Any, Any] = {}
    has_child: set[Any] = set()
    for node, parents in graph.items():
        nodes[node] = delayed(fn, pure=False)(*[nodes[p] for p in parents])
        has_child.update(parents)
    sinks = [d for n, d in nodes.items() if n not in has_child]
    return sinks[0] if len(sinks) == 1 else delayed(_gather, pure=False)(*sinks)


def run(graph: Graph, fn: Callable[..., Any]) -> tuple[float, float, Any]:
    """Returns ``(build_s, compute_s, result)``."""
    t0 = time.perf_counter()
    target = build(graph, fn)
    t1 = time.perf_counter()
    (result,) = dask.compute(target, scheduler="threads", optimize_graph=OPTIMIZE_GRAPH)
    return t1 - t0, time.perf_counter() - t1, result
