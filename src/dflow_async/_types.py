"""Runtime type checks for OP ports: small, predictable, and strict where it matters."""

from __future__ import annotations

import os
import types
import typing
from collections import abc
from pathlib import Path
from typing import Any

__all__ = ["describe", "is_compatible", "item_type", "matches"]

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

    Only flags sure mismatches: between plain classes (``str`` into ``int``), and for generic
    types between unrelated containers (``list[int]`` into ``int``) or between element types
    that are plain classes (``list[int]`` into ``list[str]``). Anything unknown (``Any``,
    unions, TypeVars, Protocols that refuse ``issubclass``) is left to the run-time check on
    the actual value.
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
    # Annotated[T, ...] carries metadata for tools: T is what the value is
    if typing.get_origin(produced) is typing.Annotated:
        return is_compatible(typing.get_args(produced)[0], consumed)
    if typing.get_origin(consumed) is typing.Annotated:
        return is_compatible(produced, typing.get_args(consumed)[0])
    if isinstance(produced, type) and isinstance(consumed, type):
        return _classes_compatible(produced, consumed)
    return _generics_compatible(produced, consumed)


def _classes_compatible(produced: type, consumed: type) -> bool:
    """Two plain classes: the producer's must be the consumer's (or a subclass of it)."""
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


def _generics_compatible(produced: Any, consumed: Any) -> bool:
    """At least one side generic (``list[int]``) or not a class at all (a union, a TypeVar,
    ``Literal[...]``, a string): judged conservatively, by the containers' classes (neither a
    subclass of the other is a sure mismatch: ``list[int]`` cannot be an ``int``, while a
    ``Sequence[int]`` may well be a list), then by their element types."""
    p_cls = typing.get_origin(produced) or produced
    c_cls = typing.get_origin(consumed) or consumed
    if not (isinstance(p_cls, type) and isinstance(c_cls, type)):
        return True  # Union, Literal, TypeVar, forward references: cannot judge
    if p_cls is types.UnionType or c_cls is types.UnionType:
        return True
    # a TypedDict is a dict to compare containers with (issubclass refuses it)
    p_cls = dict if _is_typeddict(p_cls) else p_cls
    c_cls = dict if _is_typeddict(c_cls) else c_cls
    # a tuple is accepted where a list is declared (as matches() does)
    lenient = _SEQUENCES.get(c_cls)
    try:
        related = (
            issubclass(p_cls, c_cls)
            or issubclass(c_cls, p_cls)
            or (lenient is not None and issubclass(p_cls, lenient))
        )
    except TypeError:  # as in _classes_compatible(): a Protocol that cannot be judged
        return True
    if not related:
        return False
    p_args, c_args = typing.get_args(produced), typing.get_args(consumed)
    if c_cls in _SEQUENCES and p_cls in _SEQUENCES:
        p_item, c_item = _item_type(p_cls, p_args), _item_type(c_cls, c_args)
        return p_item is None or c_item is None or is_compatible(p_item, c_item)
    if c_cls in _MAPPINGS and p_cls in _MAPPINGS and len(p_args) == len(c_args) == 2:
        return is_compatible(p_args[0], c_args[0]) and is_compatible(p_args[1], c_args[1])
    return True


_MAPPINGS = frozenset({dict, abc.Mapping, abc.MutableMapping})


def _item_type(cls: Any, args: tuple[Any, ...]) -> Any:
    """The element type of a homogeneous container type (``list[int]``, ``tuple[int, ...]``);
    None when it has none (a bare ``list``) or several (``tuple[int, str]``)."""
    if cls is tuple:
        return args[0] if len(args) == 2 and args[1] is Ellipsis else None
    return args[0] if len(args) == 1 else None


def item_type(container: Any) -> Any:
    """The type of the items of a value typed ``container`` (what ``with_param`` over it gives
    the item), or None if unknown."""
    if typing.get_origin(container) is typing.Annotated:
        container = typing.get_args(container)[0]
    cls = typing.get_origin(container)
    if cls not in _SEQUENCES:
        return None
    return _item_type(cls, typing.get_args(container))


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")
