"""Dflow's Argo helpers: ``argo_range``, ``argo_len``, ``argo_sequence``, ``argo_enumerate``...

On Argo these build expression strings. Here they compute the value at once when every argument
is a plain value, and otherwise build a native expression (``_refs.Expr``) that the scheduler
evaluates when the step becomes ready, from the actual upstream values. Argo passes parameters
as JSON text, so arguments that arrive as strings are decoded first.
"""

from __future__ import annotations

import json
from typing import Any

from dflow_async._refs import Expr, Ref

__all__ = [
    "ArgoSequence",
    "argo_concat",
    "argo_enumerate",
    "argo_len",
    "argo_range",
    "argo_sequence",
    "argo_sum",
    "sequence_items",
]


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _int(value: Any) -> int:
    return int(_decode(value))


def _lazy(fn: Any, name: str, *args: Any) -> Any:
    """``fn(*args)`` now if no argument is a reference, else an expression for run time."""
    if any(isinstance(a, Ref) for a in args):
        return Expr(fn, name, *args)
    return fn(*args)


def _range(start: Any, end: Any, step: Any) -> list[int]:
    return list(range(_int(start), _int(end), _int(step)))


def argo_range(*args: Any) -> Any:
    """``range(...)`` of 1-3 arguments, any of which may be a parameter reference."""
    if not 1 <= len(args) <= 3:
        raise TypeError(f"Expected 1-3 arguments, got {len(args)}")
    start, end, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
    return _lazy(_range, "argo_range", start, end, step)


def _len(value: Any) -> int:
    return len(_decode(value))


def argo_len(param: Any) -> Any:
    """The length of a list parameter (or of a list artifact: its number of paths)."""
    from dflow_async.dflow._artifacts import artifact_value

    return _lazy(_len, "argo_len", artifact_value(param))


def _enumerate(names: tuple[str, ...], *lists: Any) -> list[dict[str, Any]]:
    decoded = [_decode(v) for v in lists]
    n = len(decoded[0])
    return [
        {"order": i, **{k: v[i] for k, v in zip(names, decoded, strict=True)}} for i in range(n)
    ]


def argo_enumerate(*args: Any, **kwargs: Any) -> Any:
    """``[{"order": i, "value": x[i], ...}]`` over one or more lists (Dflow's item shape)."""
    if len(args) == 1:
        kwargs["value"] = args[0]
    else:
        for i, arg in enumerate(args):
            kwargs[f"value{i}"] = arg
    names = tuple(kwargs)
    return _lazy(lambda *lists: _enumerate(names, *lists), "argo_enumerate", *kwargs.values())


def _sum(value: Any) -> Any:
    return sum(_decode(v) for v in _decode(value))


def argo_sum(param: Any) -> Any:
    """The sum of a list of integers (typically a fan-out step's stacked outputs)."""
    return _lazy(_sum, "argo_sum", param)


def _concat(value: Any) -> list[Any]:
    return [x for v in _decode(value) for x in _decode(v)]


def argo_concat(param: Any) -> Any:
    """A list of lists joined into one list."""
    return _lazy(_concat, "argo_concat", param)


class ArgoSequence:
    """Dflow's ``argo_sequence(count=, start=, end=, format=)`` for ``with_sequence=``."""

    def __init__(self, count: Any, start: Any, end: Any, format: str | None) -> None:
        self.count = count
        self.start = start
        self.end = end
        self.format = format

    def items(self) -> Any:
        """The items as a list, or an expression when a bound is a reference."""
        fmt = self.format
        return _lazy(
            lambda c, s, e: sequence_items(c, s, e, fmt),
            "argo_sequence",
            self.count,
            self.start,
            self.end,
        )


def sequence_items(count: Any, start: Any, end: Any, fmt: str | None) -> list[Any]:
    """Argo's sequence: ``count`` numbers from ``start``, or ``start..end`` inclusive."""
    first = _int(start) if start is not None else 0
    if count is not None:
        numbers = list(range(first, first + _int(count)))
    elif end is not None:
        last = _int(end)
        numbers = (
            list(range(first, last + 1)) if last >= first else list(range(first, last - 1, -1))
        )
    else:
        numbers = []
    return [fmt % i for i in numbers] if fmt else numbers


def argo_sequence(
    count: Any = None, start: Any = None, end: Any = None, format: str | None = None
) -> ArgoSequence:
    """A numeric sequence for ``Step(with_sequence=...)``; bounds may be references."""
    return ArgoSequence(count, start, end, format)
