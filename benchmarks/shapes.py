"""Benchmark graph shapes, as plain data every runner can consume.

A graph is ``dict[node, list[parent]]`` with int nodes, inserted in topological order (so a
runner may build it in one pass). ``kind`` tells runners what the nodes do:

* ``"noop"``: every node is a no-op returning its input.
* ``"fanout"``: nodes ``0..width-1`` are the fan-out, node ``width`` reduces all of them.
  Baselines run it as ``width + 1`` tasks; dflow-async as ONE sliced step + a reduce step.
* ``"sleep"``: every node awaits ``asyncio.sleep(SLEEP_S)`` (async runners only).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

Graph = dict[int, list[int]]
SLEEP_S = 0.1


@dataclass(frozen=True)
class Shape:
    name: str
    graph: Graph
    kind: Literal["noop", "fanout", "sleep"] = "noop"
    meta: dict[str, int] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.graph)


def independent(n: int) -> Shape:
    return Shape(f"independent-{n}", {i: [] for i in range(n)})


def chain(n: int) -> Shape:
    return Shape(f"chain-{n}", {i: [i - 1] if i else [] for i in range(n)})


def fanout(width: int) -> Shape:
    graph: Graph = {i: [] for i in range(width)}
    graph[width] = list(range(width))
    return Shape(f"fanout-reduce-{width}", graph, "fanout", {"width": width})


def sleep(n: int) -> Shape:
    return Shape(f"async-sleep-{n}x{SLEEP_S}s", {i: [] for i in range(n)}, "sleep")


def layered(layers: int, width: int, fan_in: int = 2, seed: int = 0) -> Shape:
    """Random layered DAG: each node of layer k>0 has ``fan_in`` distinct parents in layer k-1."""
    rng = random.Random(seed)
    graph: Graph = {i: [] for i in range(width)}
    for layer in range(1, layers):
        prev = range((layer - 1) * width, layer * width)
        for i in range(layer * width, (layer + 1) * width):
            graph[i] = rng.sample(prev, fan_in)
    return Shape(f"layered-{layers}x{width}", graph, meta={"layers": layers, "width": width})


def default_shapes(quick: bool = False) -> list[Shape]:
    # --quick divides every size by 10: a smoke run, not a measurement.
    d = 10 if quick else 1
    return [
        independent(10_000 // d),
        chain(2_000 // d),
        fanout(5_000 // d),
        sleep(2_000 // d),
        layered(20, 500 // d),
    ]


def memory_shape(quick: bool = False) -> Shape:
    # Flat on purpose: it measures per-step state, and stays cheap to validate and build
    # (dependency handling at scale is what layered-20x500 is for).
    return independent(100_000 // (10 if quick else 1))
