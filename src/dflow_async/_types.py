"""Runtime type checks for OP ports: small, predictable, and strict where it matters."""

from __future__ import annotations

import os
import types
import typing
from collections import abc
from pathlib import Path
from typing import Any

__all__ = ["describe", "is_compatible", "matches"]

_SEQUENCES: dict[Any, Any] = {
    list: list | tuple,
    tuple: tuple | list,
    set: set | frozenset,
    frozenset: frozenset | set,
    abc.Sequence: list | tuple,
    abc.Iterable: list | tuple | set | frozenset,
}


def describe(tp: Any) -> str:
    """A short readable name for a type annotation."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def matches(tp: Any, value: Any) -> bool:
    """Whether ``value`` is acceptable for a port annotated ``tp``.

    Containers are checked element by element: a wrong element deep in a list is the kind of
    bug that otherwise surfaces three steps later, on another machine.
    """
    if type(value) is tp or tp is Any or tp is object or (tp is None and value is None):
        return True
    if isinstance(tp, typing.TypeVar | str):
        return True
    origin = typing.get_origin(tp)
    if origin is None:
        if tp is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if tp is Path:
            return isinstance(value, str | os.PathLike)
        if _is_typeddict(tp):
            return isinstance(value, dict)
        if isinstance(tp, type):
            try:
                return isinstance(value, tp)
            except TypeError:  # protocols and other exotic classes
                return True
        return True
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return any(matches(a, value) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is typing.Annotated:
        return matches(args[0], value)
    if origin in _SEQUENCES:
        # a tuple is accepted where a list is declared: JSON and pickle round trips blur them
        if not isinstance(value, _SEQUENCES[origin]):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(
                matches(a, v) for a, v in zip(args, value, strict=True)
            )
        item = args[0] if args else Any
        return all(matches(item, v) for v in value)
    if origin in (dict, abc.Mapping, abc.MutableMapping):
        if not isinstance(value, dict):
            return False
        if len(args) == 2:
            return all(matches(args[0], k) and matches(args[1], v) for k, v in value.items())
        return True
    if isinstance(origin, type):
        try:
            return isinstance(value, origin)
        except TypeError:
            return True
    return True


#: is_compatible's answers by (produced, consumed): validation asks it once per data edge,
#: nearly always about the same few pairs. Emptied when it grows past _COMPATIBLE_MAX, so
#: classes made on the fly (tests, notebooks) are not kept alive for ever.
_COMPATIBLE: dict[tuple[Any, Any], bool] = {}
_COMPATIBLE_MAX = 1024


def is_compatible(produced: Any, consumed: Any) -> bool:
    """Whether a producer's declared output type can feed a consumer's input type.

    Only flags sure mismatches between plain classes (``str`` into ``int``); anything generic
    or unknown is left to the run-time check on the actual value.
    """
    pair = (produced, consumed)
    try:
        return _COMPATIBLE[pair]
    except KeyError:
        pass
    except TypeError:  # an unhashable annotation: not cached
        return _is_compatible(produced, consumed)
    answer = _is_compatible(produced, consumed)
    if len(_COMPATIBLE) >= _COMPATIBLE_MAX:
        _COMPATIBLE.clear()
    _COMPATIBLE[pair] = answer
    return answer


def _is_compatible(produced: Any, consumed: Any) -> bool:
    if produced is consumed:  # also spares issubclass a Protocol it would refuse to check
        return True
    if produced is Any or consumed is Any or produced is None or consumed is None:
        return True
    if not (isinstance(produced, type) and isinstance(consumed, type)):
        return True
    if typing.get_args(produced) or typing.get_args(consumed):
        return True
    if consumed is float and produced is int:
        return True
    if consumed is Path and produced is str:
        return True
    if _is_typeddict(consumed):
        return produced is dict or _is_typeddict(produced)
    try:
        return issubclass(produced, consumed)
    except TypeError:
        # a Protocol that is not @runtime_checkable (or has data members) refuses
        # issubclass: a mismatch cannot be proven, so the edge is accepted like any other
        # annotation validation cannot judge
        return True


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")
