"""Dflow's ``dflow.python`` OP model: ``OP``, ``OPIOSign``, ``Artifact``, ``Parameter``...

These classes keep Dflow's constructors and behaviour (abstract signs, ``exec_sign_check``,
``OP.function`` with ``dflow_output`` names) so OP packages written for Dflow import them
unchanged. They are *not* the native descriptors: the scheduler sees every Dflow-style OP, ours
or pydflow's, through one adapter (:mod:`dflow_async.dflow._adapt`), which translates the
descriptors and converts artifact values to the types Dflow hands to ``execute``.
"""

from __future__ import annotations

import abc
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from copy import deepcopy
from functools import partial
from pathlib import Path
from typing import Any

from dflow_async._op import OPIO
from dflow_async._op import OPIOSign as _NativeSign
from dflow_async._types import describe, matches

__all__ = [
    "OP",
    "OPIO",
    "Artifact",
    "BigParameter",
    "HDF5Datasets",
    "NestedDict",
    "OPIOSign",
    "Parameter",
]


class _NestedDictStr:
    """Dflow's ``NestedDict[str]``: a nested dict of file paths as strings."""


class _NestedDictPath:
    """Dflow's ``NestedDict[Path]``: a nested dict of file paths."""


NestedDict: dict[Any, type] = {str: _NestedDictStr, Path: _NestedDictPath}


class HDF5Datasets:
    """Dflow's HDF5 dataset artifacts: importable (dpgen2 imports it with the rest), refused
    as an artifact's only type when a template uses it; ``Union[List[Path], HDF5Datasets]``
    is taken as ``List[Path]``."""


def _allowed_artifact_type(tp: Any) -> bool:
    """Dflow's list: str, Path, List/Set of them, Dict[str, str|Path], NestedDict[str|Path],
    each of these or'ed with HDF5Datasets, and HDF5Datasets."""
    if tp in (str, Path, _NestedDictStr, _NestedDictPath, HDF5Datasets):
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and HDF5Datasets in args:
        return _allowed_artifact_type(next(a for a in args if a is not HDF5Datasets))
    if origin in (list, set):
        return args in ((str,), (Path,))
    return origin is dict and args in ((str, str), (str, Path))


class Artifact:
    """Dflow's artifact sign: ``Artifact(Path)``, ``Artifact(List[str], optional=True)``.

    ``archive`` (compression in object storage) has no local effect; ``save=`` (extra copies
    in other storage) is refused when a template uses it; ``global_name`` is kept.
    """

    def __init__(
        self,
        type: Any,
        archive: str | None = "default",
        save: list[Any] | None = None,
        optional: bool = False,
        global_name: str | None = None,
        sub_path: bool = True,
        **kwargs: Any,
    ) -> None:
        self.type = type
        self.archive = archive
        self.save = save
        self.optional = optional
        self.global_name = global_name
        self.sub_path = sub_path
        for k, v in kwargs.items():
            setattr(self, k, v)

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "type" and not _allowed_artifact_type(value):
            raise TypeError(
                f"{describe(value)} is not an allowed artifact type; use str, Path, "
                "List[str], List[Path], Set[...], Dict[str, str|Path] or NestedDict[str|Path]"
            )
        super().__setattr__(key, value)

    def __repr__(self) -> str:
        return f"Artifact(type={describe(self.type)}, optional={self.optional})"


class Parameter:
    """Dflow's parameter sign: ``Parameter(int, default=3)``; no ``default`` means required."""

    def __init__(self, type: Any, global_name: str | None = None, **kwargs: Any) -> None:
        self.type = type
        self.global_name = global_name
        for k, v in kwargs.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        default = f", default={self.default!r}" if hasattr(self, "default") else ""
        return f"{type(self).__name__}(type={describe(self.type)}{default})"


class BigParameter(Parameter):
    """Dflow's big parameter (stored as an artifact on Argo); here a parameter like any other.

    Dflow's ``BigParameter`` is not a ``Parameter`` subclass and takes no ``global_name``; the
    subclass here only shares the repr and the ``default`` handling.
    """

    def __init__(self, type: Any, **kwargs: Any) -> None:
        super().__init__(type, **kwargs)


class OPIOSign(_NativeSign):
    """Port name -> type, ``Parameter``, ``BigParameter`` or ``Artifact`` (Dflow's)."""

    def ports(self) -> dict[str, Any]:
        from dflow_async.dflow._adapt import translate_sign

        return translate_sign(self, "input").ports


class OP(abc.ABC):
    """Dflow's ``dflow.python.OP``: override ``get_input_sign``, ``get_output_sign`` and
    ``execute``. Use the class (or an instance) as ``PythonOPTemplate(MyOP)``, or directly as a
    native ``dflow_async.Step`` template."""

    progress_total = 1
    progress_current = 0
    key: str | None = None  # the step's rendered key while it runs
    workflow_name: str | None = None  # the run id while it runs
    outputs: dict[str, Any] = {}
    slices: dict[str, Any] = {}
    tmp_root = "/tmp"
    create_slice_dir = False
    pool_size: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: B027 (Dflow's signature)
        pass

    @classmethod
    @abc.abstractmethod
    def get_input_sign(cls) -> OPIOSign:
        """The signature of the inputs."""

    @classmethod
    @abc.abstractmethod
    def get_output_sign(cls) -> OPIOSign:
        """The signature of the outputs."""

    @abc.abstractmethod
    def execute(self, op_in: OPIO) -> OPIO:
        """Run the OP."""
        raise NotImplementedError

    @staticmethod
    def exec_sign_check(func: Callable[..., Any]) -> Callable[..., Any]:
        """Check ``execute``'s input and output against the signs, as Dflow does.

        The scheduler checks both at the step boundary too; this keeps the check for code that
        calls ``execute`` directly (unit tests of OP packages).
        """

        @functools.wraps(func)
        def wrapper_exec(self: Any, op_in: Any) -> Any:
            _check_signature(op_in, self.get_input_sign(), True)
            op_out = func(self, op_in)
            _check_signature(op_out, self.get_output_sign(), False)
            return op_out

        return wrapper_exec

    @classmethod
    def function(cls, func: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        """Dflow's ``@OP.function``: an OP instance from a function's annotations.

        Outputs follow Dflow's naming: a dict/TypedDict/NamedTuple return annotation names them;
        a ``Tuple[...]`` gives ``dflow_output_0``...; any other type gives ``dflow_output``.
        """
        if func is None:
            return partial(cls.function, **kwargs)
        return _function_op(cls, func, kwargs)

    @classmethod
    def superfunction(cls, func: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        from dflow_async.dflow._unsupported import refuse

        refuse("OP.superfunction (Dflow's context-syntax DAG builder)", "build a DAG with Tasks")


def _check_signature(opio: Any, sign: Mapping[str, Any], is_input: bool) -> None:
    where = "input" if is_input else "output"
    given = "passed to the OP" if is_input else "given by the OP"
    for name, s in sign.items():
        if name not in opio:
            if _kind(s) in ("Parameter", "BigParameter") and hasattr(s, "default"):
                opio[name] = s.default
            elif _kind(s) == "Artifact" and s.optional:
                opio[name] = None
            else:
                raise RuntimeError(
                    f"key {name} declared in the {where} sign is not present in the {where} {given}"
                )
    for name in opio:
        if name not in sign:
            raise RuntimeError(
                f"key {name} in the {where} {given} is not declared in its {where} sign"
            )
        s = sign[name]
        if _kind(s) == "Artifact" or opio[name] is None:
            continue  # paths are checked by the scheduler; None is always accepted, as in Dflow
        tp = s.type if _kind(s) else s
        if not matches(tp, opio[name]):
            raise TypeError(
                f"type of {name} must be {describe(tp)}; got {type(opio[name]).__name__} instead"
            )


def _kind(sign: Any) -> str | None:
    names = [c.__name__ for c in type(sign).__mro__]
    for kind in ("Artifact", "BigParameter", "Parameter"):
        if kind in names:
            return kind
    return None


def _function_op(base: type, func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    input_sign, output_sign, ret2opio = _sign_from_func(func)

    class FunctionOP(base):  # type: ignore[misc]
        task_kwargs: dict[str, Any] = {}
        template_kwargs = kwargs

        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return deepcopy(input_sign)

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return deepcopy(output_sign)

        @OP.exec_sign_check
        def execute(self, op_in: OPIO) -> OPIO:
            return OPIO(ret2opio(func(**op_in)))

        def __call__(self, *args: Any, **op_in: Any) -> Any:
            names = list(input_sign)
            for i, v in enumerate(args):
                if names[i] in op_in:
                    raise TypeError(
                        f"{func.__name__}() got multiple values for argument {names[i]!r}"
                    )
                op_in[names[i]] = v
            return self.execute(OPIO(op_in))

    FunctionOP.func = staticmethod(func)
    FunctionOP.__name__ = func.__name__
    FunctionOP.__qualname__ = getattr(func, "__qualname__", func.__name__)
    FunctionOP.__module__ = func.__module__
    return FunctionOP()


def _sign_from_func(
    func: Callable[..., Any],
) -> tuple[OPIOSign, OPIOSign, Callable[[Any], dict[str, Any]]]:
    input_sign = OPIOSign()
    try:  # modules with ``from __future__ import annotations`` hold them as strings
        signature = inspect.signature(func, eval_str=True)
    except Exception:
        signature = inspect.signature(func)
    for param in signature.parameters.values():
        tp = param.annotation if param.annotation is not inspect.Parameter.empty else Any
        if param.default is not inspect.Parameter.empty:
            if isinstance(tp, Artifact):
                if param.default is None:
                    tp.optional = True
            elif isinstance(tp, Parameter):
                tp.default = param.default  # type: ignore[attr-defined]
            else:
                tp = Parameter(tp, default=param.default)
        input_sign[param.name] = tp
    ret = signature.return_annotation
    return (input_sign, *_outputs_from_annotation(ret))


def _outputs_from_annotation(t: Any) -> tuple[OPIOSign, Callable[[Any], dict[str, Any]]]:
    if t is inspect.Signature.empty or t is None:
        return OPIOSign(), lambda x: {}
    if isinstance(t, dict):
        return OPIOSign(t), lambda x: dict(x)
    if isinstance(t, type) and issubclass(t, dict) and hasattr(t, "__annotations__"):
        return OPIOSign(t.__annotations__), lambda x: dict(x)
    if isinstance(t, type) and issubclass(t, tuple) and hasattr(t, "__annotations__"):
        names = list(t.__annotations__)
        return OPIOSign(t.__annotations__), lambda x: dict(zip(names, x, strict=True))
    if typing.get_origin(t) is tuple:
        args = typing.get_args(t)
        sign = OPIOSign({f"dflow_output_{i}": a for i, a in enumerate(args)})
        return sign, lambda x: {f"dflow_output_{i}": v for i, v in enumerate(x)}
    return OPIOSign({"dflow_output": t}), lambda x: {"dflow_output": x}
