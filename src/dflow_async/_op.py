"""OPs: reusable typed operations, in Dflow's class style or as decorated functions."""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dflow_async._store_local import ensure_dir
from dflow_async._types import describe, matches
from dflow_async.exceptions import SignatureError

__all__ = [
    "MISSING",
    "OP",
    "OPIO",
    "Artifact",
    "BigParameter",
    "FunctionOP",
    "OPIOSign",
    "Parameter",
    "StepContext",
    "as_op",
    "current_context",
    "op",
    "op_name",
]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


#: Marks "no default": the port is required.
MISSING: Any = _Missing()


class Parameter:
    """A small value passed in memory. ``Parameter(int, default=3)``."""

    __slots__ = ("default", "description", "type")

    def __init__(self, type: Any = Any, default: Any = MISSING, *, description: str | None = None):
        self.type = type
        self.default = default
        self.description = description

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def __repr__(self) -> str:
        default = "" if self.default is MISSING else f", default={self.default!r}"
        return f"{type(self).__name__}({describe(self.type)}{default})"


class BigParameter(Parameter):
    """A large value; executors may pass it through the artifact store by reference."""

    __slots__ = ()


class Artifact:
    """A file, a directory, or a list/dict of them, passed by path.

    ``Artifact(Path)``, ``Artifact(list[Path])``, ``Artifact(dict[str, Path])``,
    ``Artifact(Path, optional=True)``; in ``@op`` annotations also ``Annotated[Path, Artifact]``.
    """

    __slots__ = ("description", "optional", "type")

    def __init__(
        self, type: Any = Path, *, optional: bool = False, description: str | None = None
    ) -> None:
        self.type = type
        self.optional = optional
        self.description = description

    @property
    def required(self) -> bool:
        return not self.optional

    @property
    def default(self) -> Any:
        return None if self.optional else MISSING

    def __repr__(self) -> str:
        opt = ", optional=True" if self.optional else ""
        return f"Artifact({describe(self.type)}{opt})"


Port = Parameter | Artifact


class OPIOSign(dict[str, Any]):
    """The declared inputs or outputs of an OP: port name -> type, Parameter or Artifact."""

    def ports(self) -> dict[str, Port]:
        return {name: as_port(value) for name, value in self.items()}


class OPIO(dict[str, Any]):
    """The values an OP receives or returns, by port name."""


def as_port(value: Any) -> Port:
    """Normalise a sign entry: a bare type means ``Parameter(type)``."""
    if isinstance(value, Parameter | Artifact):
        return value
    if value is Artifact:
        return Artifact()
    if typing.get_origin(value) is typing.Annotated:
        base, *meta = typing.get_args(value)
        for m in meta:
            if m is Artifact:
                return Artifact(base)
            if isinstance(m, Artifact):
                return Artifact(base, optional=m.optional, description=m.description)
            if isinstance(m, Parameter):
                return type(m)(base, m.default, description=m.description)
    return Parameter(value)


@dataclass(slots=True)
class StepContext:
    """Where the current attempt runs; ``current_context()`` returns it inside an OP.

    ``async def`` OPs share the event loop's thread, so they cannot rely on the current
    directory: they use ``workdir`` instead (relative output paths are resolved against it).
    The directory is created on first access, so OPs that never touch files cost no mkdir.
    """

    workdir_path: str
    step: str
    key: str | None
    attempt: int
    slice_index: int | None
    run_id: str
    # where sys.stdout/sys.stderr writes of this attempt go (see _capture): carried here so
    # that an attempt sets one context variable, not two. Opened on the first write, into
    # ``log_workdir``'s log: most attempts print nothing, and then no log object is built.
    log: Any = field(default=None, repr=False, compare=False)
    log_workdir: str | None = field(default=None, repr=False, compare=False)

    @property
    def workdir(self) -> Path:
        ensure_dir(self.workdir_path)
        return Path(self.workdir_path)


_current: contextvars.ContextVar[StepContext] = contextvars.ContextVar("dflow_async_step")


def current_context() -> StepContext:
    """The context of the attempt being executed; fails outside an OP."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("current_context() is only available while an OP executes") from None


class OP:
    """Base class of class-style OPs (Dflow's ``dflow.python.OP``).

    Override the classmethods :meth:`get_input_sign` / :meth:`get_output_sign` and
    :meth:`execute` (plain or ``async def``). Instances are created with no arguments unless a
    Step is given an instance.
    """

    #: Bump when the OP's meaning changes, to invalidate caches keyed on it.
    version: ClassVar[str] = "0"
    #: Default for ``Step(cache=...)``: reuse an earlier success with the same code and inputs.
    cache: ClassVar[bool] = False

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign()

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign()

    def execute(self, op_in: OPIO) -> Any:  # OPIO, or an awaitable of one for async OPs
        raise NotImplementedError(f"{type(self).__name__}.execute() is not implemented")

    @staticmethod
    def exec_sign_check(func: Callable[..., Any]) -> Callable[..., Any]:
        """Dflow's decorator; dflow-async always checks signs, so it changes nothing."""
        return func

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.execute)

    def input_ports(self) -> dict[str, Port]:
        return OPIOSign(self.get_input_sign()).ports()

    def output_ports(self) -> dict[str, Port]:
        return OPIOSign(self.get_output_sign()).ports()


class FunctionOP(OP):
    """An OP made by :func:`op` from a function; calling it calls the function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: dict[str, Port],
        outputs: dict[str, Port],
        single_output: bool,
    ) -> None:
        self.fn = fn
        self._inputs = inputs
        self._outputs = outputs
        self._single = single_output
        self._is_async = inspect.iscoroutinefunction(fn)
        # a functools.partial is named after its function, and has its docstring
        named = fn.func if isinstance(fn, functools.partial) else fn
        self.__name__ = named.__name__
        self.__qualname__ = named.__qualname__
        self.__module__ = named.__module__
        self.__doc__ = named.__doc__

    def get_input_sign(self) -> OPIOSign:  # type: ignore[override]
        return OPIOSign(self._inputs)

    def get_output_sign(self) -> OPIOSign:  # type: ignore[override]
        return OPIOSign(self._outputs)

    def input_ports(self) -> dict[str, Port]:
        return self._inputs

    def output_ports(self) -> dict[str, Port]:
        return self._outputs

    @property
    def is_async(self) -> bool:
        return self._is_async

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def execute(self, op_in: OPIO) -> Any:
        result = self.fn(**op_in)
        if inspect.isawaitable(result):
            return self._await_and_wrap(result)
        return self._wrap(result)

    async def _await_and_wrap(self, awaitable: Any) -> OPIO:
        return self._wrap(await awaitable)

    def _wrap(self, result: Any) -> OPIO:
        return OPIO(self._outputs_of(result))

    def _outputs_of(self, result: Any) -> dict[str, Any]:
        """The function's return value as a new plain dict of outputs (what workers keep)."""
        if self._single:
            return {"result": result}
        if not self._outputs and result is None:
            return {}
        if not self._outputs and not isinstance(result, Mapping):
            raise SignatureError(
                f"OP {self.__qualname__!r} returned {type(result).__name__} but declares no "
                "outputs: annotate its return (-> int for one output named 'result', or "
                "-> {'name': type, ...}), or return None"
            )
        if not isinstance(result, Mapping):
            raise SignatureError(
                f"OP {self.__qualname__!r} must return a dict with keys "
                f"{sorted(self._outputs)} (its return annotation), got {type(result).__name__}"
            )
        return dict(result)

    def __repr__(self) -> str:
        return f"<op {self.__module__}.{self.__qualname__}>"

    def __reduce__(self) -> Any:
        # Pickle by reference when the module attribute is this very object: workers import
        # it instead of receiving the function's code (and its globals) by value.
        module = sys.modules.get(self.__module__)
        if module is not None and self.__module__ != "__main__":
            target: Any = module
            try:
                for part in self.__qualname__.split("."):
                    target = getattr(target, part)
            except AttributeError:
                target = None
            if target is self:
                return (_import_object, (self.__module__, self.__qualname__))
        return (FunctionOP, (self.fn, self._inputs, self._outputs, self._single))


# Dflow's ``@OP.function`` decorator: the same as ``@op``.
OP.function = staticmethod(lambda fn: op(fn))  # type: ignore[attr-defined]


def _import_object(module: str, qualname: str) -> Any:
    import importlib

    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def op(fn: Callable[..., Any]) -> FunctionOP:
    """Make an OP from a plain or ``async def`` function.

    Inputs come from the parameters (defaults make them optional); outputs from the return
    annotation: a dict literal ``{"name": type}``, a ``TypedDict``, or a single type (one output
    named ``result``). ``Artifact(Path)`` or ``Annotated[Path, Artifact]`` marks artifact ports.

    ``fn`` may be a ``functools.partial`` of such a function: the OP takes the parameters the
    partial leaves (a keyword it binds stays an input, with that value as its default) and has
    the function's name, annotations and outputs.
    """
    _refuse_op(fn)
    if isinstance(fn, functools.partial):
        inner = fn.func.fn if isinstance(fn.func, FunctionOP) else fn.func  # partial(an @op)
        fn = functools.partial(inner, *fn.args, **fn.keywords)
        named: Any = inner
    else:
        named = fn
    if not hasattr(named, "__qualname__"):  # an object with __call__: no name, no signs
        raise TypeError(
            f"@op decorates a function (or a functools.partial of one), got {named!r}: write "
            "an OP class for a callable object, or decorate a function that calls it"
        )
    try:
        hints = inspect.get_annotations(named, eval_str=True)
    except Exception as exc:  # a NameError in a string annotation, typically
        raise SignatureError(
            f"cannot read the annotations of {named.__qualname__!r}: {exc}"
        ) from exc
    inputs: dict[str, Port] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise SignatureError(
                f"@op function {named.__qualname__!r} cannot take *args/**kwargs ({name!r}): "
                "every input must be a named port"
            )
        port = as_port(hints.get(name, Any))
        if param.default is not param.empty:
            port = _optional(port, param.default)
        inputs[name] = port
    outputs, single = _outputs_from_annotation(fn, hints.get("return", inspect.Signature.empty))
    return FunctionOP(fn, inputs, outputs, single)


def _refuse_op(fn: Any) -> None:
    """``@op`` makes OPs of functions: an OP (class, instance, another library's) is one
    already, and a non-callable none at all."""
    if isinstance(fn, type) and (
        issubclass(fn, OP) or (hasattr(fn, "get_input_sign") and hasattr(fn, "execute"))
    ):
        raise TypeError(
            f"@op got {fn.__qualname__!r}, which is already an OP class: use it directly as a "
            f"Step template (Step(name, {fn.__name__}, parameters={{...}})), without @op"
        )
    if isinstance(fn, OP):
        what = (
            f"@op function {fn.__qualname__!r}"
            if isinstance(fn, FunctionOP)
            else f"an instance of OP class {type(fn).__qualname__!r}"
        )
        raise TypeError(
            f"@op got {what}, which is already an OP: use it directly as a Step template, "
            "without @op again"
        )
    if not callable(fn):
        raise TypeError(f"@op decorates a function, got {fn!r}")


def _outputs_from_annotation(fn: Callable[..., Any], ann: Any) -> tuple[dict[str, Port], bool]:
    if ann is inspect.Signature.empty or ann is None or ann is type(None):
        return {}, False
    if isinstance(ann, dict):
        return {str(k): as_port(v) for k, v in ann.items()}, False
    if isinstance(ann, type) and issubclass(ann, dict) and hasattr(ann, "__total__"):
        hints = typing.get_type_hints(ann, include_extras=True)
        required = getattr(ann, "__required_keys__", hints.keys())
        ports: dict[str, Port] = {}
        for k, v in hints.items():
            # a key the OP may leave out (total=False, NotRequired) reads as None. The
            # wrapper decides when present: __required_keys__ misses it in string annotations
            marker = typing.get_origin(v)
            if marker in (typing.Required, typing.NotRequired):
                v = typing.get_args(v)[0]
            may_omit = marker is typing.NotRequired or (
                marker is not typing.Required and k not in required
            )
            ports[k] = _optional(as_port(v), None) if may_omit else as_port(v)
        return ports, False
    return {"result": as_port(ann)}, True


def _optional(port: Port, default: Any) -> Port:
    """``port`` with a default: an optional artifact (its default is None), or a parameter
    with ``default``."""
    if isinstance(port, Artifact):
        return Artifact(port.type, optional=True, description=port.description)
    return type(port)(port.type, default, description=port.description)


def as_op(template: Any) -> OP:
    """An OP instance for a Step's ``template``: an OP class, an OP instance or an ``@op``."""
    if isinstance(template, OP):
        return template
    if isinstance(template, type) and issubclass(template, OP):
        return template()
    if hasattr(template, "get_input_sign") and hasattr(template, "execute"):
        # an OP written against another library's base class (pydflow's dflow.python.OP):
        # the compatibility layer wraps it, translating its sign descriptors
        from dflow_async.dflow._adapt import adapt_foreign_op

        return adapt_foreign_op(template)
    raise TypeError(
        f"a Step template must be an OP class, an OP instance, an @op function, Steps or DAG; "
        f"got {template!r}"
    )


class PortPlan(typing.NamedTuple):
    """An OP's ports, split once so the per-attempt path does no sign parsing."""

    name: str
    inputs: dict[str, Port]
    outputs: dict[str, Port]
    in_artifacts: tuple[str, ...]
    out_artifacts: tuple[str, ...]
    out_big: tuple[str, ...]  # BigParameter outputs: stored, passed by reference
    # (port, declared type) pairs, for the per-attempt fast check (see exactly_typed)
    in_types: tuple[tuple[str, Any], ...]
    out_types: tuple[tuple[str, Any], ...]
    # every input declared of an immutable class: values exactly of their ports' classes need
    # no private copy (see _worker.own_inputs)
    in_immutable: bool


#: classes whose values an OP cannot change in place
IMMUTABLE: frozenset[type] = frozenset(
    {int, float, complex, bool, str, bytes, type(None), Path, type(Path())}
)

_PLANS: dict[type, PortPlan] = {}


def port_plan(op: OP) -> PortPlan:
    """The cached :class:`PortPlan` of an OP (per instance for ``@op``, per class otherwise)."""
    if isinstance(op, FunctionOP):
        plan = op.__dict__.get("_plan")
        if plan is None:
            plan = op.__dict__["_plan"] = _make_plan(op)
        return plan
    cls = type(op)
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _make_plan(op)
    return plan


def _make_plan(op: OP) -> PortPlan:
    inputs = op.input_ports()
    outputs = op.output_ports()
    return PortPlan(
        name=op_name(op),
        inputs=inputs,
        outputs=outputs,
        in_artifacts=tuple(n for n, p in inputs.items() if isinstance(p, Artifact)),
        out_artifacts=tuple(n for n, p in outputs.items() if isinstance(p, Artifact)),
        out_big=tuple(n for n, p in outputs.items() if isinstance(p, BigParameter)),
        in_types=tuple((n, p.type) for n, p in inputs.items()),
        out_types=tuple((n, p.type) for n, p in outputs.items()),
        in_immutable=all(p.type in IMMUTABLE for p in inputs.values()),
    )


def exactly_typed(types: tuple[tuple[str, Any], ...], values: Mapping[str, Any]) -> bool:
    """Whether ``values`` has every port of ``types`` and nothing else, each value of exactly
    the declared class: the common case, which :func:`check_opio` would pass unchanged (it
    fills no default and needs no message)."""
    if len(values) != len(types):
        return False
    # a loop, not all(<generator>): this runs twice per attempt, and the generator costs more
    for name, tp in types:  # noqa: SIM110
        if name not in values or type(values[name]) is not tp:
            return False
    return True


def op_name(op: OP) -> str:
    if isinstance(op, FunctionOP):
        return f"{op.__module__}.{op.__qualname__}"
    cls = type(op)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_opio(
    ports: Mapping[str, Port],
    values: Mapping[str, Any],
    *,
    op: str,
    direction: str,
    copy: bool = True,
) -> dict[str, Any]:
    """Check values against ports; fill defaults. Raises SignatureError listing every problem.

    The result is a new dict, unless ``copy=False`` and ``values`` (then a plain dict the
    caller owns or will not mutate) passes as it is.
    """
    if len(values) == len(ports):
        # the common case, checked in one pass: every port given, each value of exactly the
        # declared class (anything else falls through to the full check and its messages)
        for name, port in ports.items():
            if name not in values or type(values[name]) is not port.type:
                break
        else:
            return dict(values) if copy or type(values) is not dict else values
    problems: list[str] = []
    checked: dict[str, Any] = {}
    for name in values:
        if name not in ports:
            problems.append(
                f"{direction} {name!r} is not declared (declared: {sorted(ports) or 'none'})"
            )
    for name, port in ports.items():
        if name in values:
            value = values[name]
            # None is a value like any other (a failed slice's hole reaching a consumer, most
            # often): it passes where the type allows it or it is the port's own default
            # (an optional artifact's), never merely because the port has some default; a
            # port may also declare that it takes None (Dflow's do: its sign check skips None)
            if value is None and (port.default is None or getattr(port, "accepts_none", False)):
                checked[name] = None
                continue
            if not matches(port.type, value):
                kind = "artifact" if isinstance(port, Artifact) else "parameter"
                problems.append(
                    f"{direction} {kind} {name!r} expects {describe(port.type)}, "
                    f"got {type(value).__name__} ({_short(value)}){_holes(port, value)}"
                )
            checked[name] = value
        elif port.required:
            problems.append(f"{direction} {name!r} is required but missing")
        else:
            checked[name] = port.default
    if problems:
        raise SignatureError(f"OP {op!r}: " + "; ".join(problems))
    return checked


def _holes(port: Port, value: Any) -> str:
    """For an artifact list/dict with None entries (a fan-out's slices that failed or produced
    nothing): which they are, and how to accept them."""
    if not isinstance(port, Artifact) or not isinstance(value, dict | list | tuple):
        return ""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    holes = [k for k, v in items if v is None]
    if not holes:
        return ""
    return (
        f": entries {holes} are None (slices that failed or produced nothing); to take them, "
        "declare the port with Optional items, e.g. Artifact(list[Path | None])"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def artifact_paths(value: Any) -> list[Path]:
    """Every path inside an artifact value (a path, or a list/dict of paths)."""
    if value is None:
        return []
    return [Path(leaf) for leaf in artifact_leaves(value)]


def artifact_leaves(value: Any) -> list[Any]:
    """The leaves of an artifact value (a path, or a list/dict of them), in order and as they
    are: a StoredPath keeps its ``.ref``. ``None`` (a failed slice's hole) has none."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in artifact_leaves(v)]
    if isinstance(value, list | tuple):
        return [leaf for v in value for leaf in artifact_leaves(v)]
    return [value]
