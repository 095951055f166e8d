"""Dflow's ``Steps`` and ``DAG`` templates on the native ones.

Differences from the native classes, all Dflow's: the name is optional, ports may be assigned
after construction (``steps.inputs.parameters["x"] = InputParameter()``), and ``add`` returns
nothing. ``parallelism`` is kept: it caps the template's concurrent attempts.
"""

from __future__ import annotations

import random
import string
from typing import Any

from dflow_async._graph import DAG as _NativeDAG
from dflow_async._graph import Steps as _NativeSteps
from dflow_async.dflow._io import bind_template_ports
from dflow_async.dflow._unsupported import refuse

__all__ = ["DAG", "Steps", "randstr"]


def randstr(length: int = 5) -> str:
    """Dflow's random suffix: lowercase letters and digits."""
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))


def _check(kind: str, context: Any) -> None:
    if context is not None:
        refuse(f"{kind}(context=...) (Dflow executor/context rendering)", "pick an executor")


class Steps(_NativeSteps):
    """Dflow's ``Steps(name=None, inputs=None, outputs=None, steps=None, ...)``."""

    def __init__(
        self,
        name: str | None = None,
        inputs: Any = None,
        outputs: Any = None,
        steps: list[Any] | None = None,
        memoize_key: str | None = None,
        annotations: dict[str, str] | None = None,
        parallelism: int | None = None,
        context: Any = None,
    ) -> None:
        _check("Steps", context)
        super().__init__(name or f"steps-{randstr()}", inputs, outputs, parallelism)
        bind_template_ports(self)
        self.memoize_key = memoize_key  # not memoized: the template runs (same results)
        self.annotations = annotations
        for step in steps or []:
            self.add(step)

    def add(self, step: Any) -> None:  # type: ignore[override]
        super().add(step)


class DAG(_NativeDAG):
    """Dflow's ``DAG(name=None, inputs=None, outputs=None, tasks=None, ...)``."""

    def __init__(
        self,
        name: str | None = None,
        inputs: Any = None,
        outputs: Any = None,
        tasks: list[Any] | None = None,
        memoize_key: str | None = None,
        annotations: dict[str, str] | None = None,
        parallelism: int | None = None,
        context: Any = None,
    ) -> None:
        _check("DAG", context)
        super().__init__(name or f"dag-{randstr()}", inputs, outputs, parallelism)
        bind_template_ports(self)
        self.memoize_key = memoize_key
        self.annotations = annotations
        for task in tasks or []:
            self.add(task)

    def add(self, task: Any) -> None:  # type: ignore[override]
        super().add(task)
