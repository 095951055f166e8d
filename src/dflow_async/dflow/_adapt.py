"""Dflow-style OPs (pydflow's ``dflow.python.OP`` or this package's) as native OPs.

:func:`adapt_foreign_op` is what the core's ``as_op`` calls for any template that looks like an
OP but is not a native one. The wrapper it returns:

* translates the OP's signs: Dflow ``Parameter``/``BigParameter``/``Artifact`` descriptors
  (recognised by class name, so pydflow itself is never imported here) become native ports;
* hands ``execute`` what Dflow would: artifacts as ``str``/``Path``/lists/sets/dicts per the
  sign, a list of files given to a single-path artifact gathered into one directory, ``op.key``
  and ``op.workflow_name`` set, the template's ``envs`` in ``os.environ``;
* turns pydflow's ``TransientError``/``FatalError`` into the native ones the retry policy
  understands, and brings output files that live outside the work directory inside it;
* serves re-used steps (``Workflow.submit(reuse_step=...)``): when the step's rendered key is in
  the run's re-use table, the recorded outputs are returned instead of running the OP.

It subclasses ``FunctionOP`` because the core caches port plans per *instance* for it (per class
for other OPs), and every wrapper shares one class.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dflow_async._op import MISSING, OP, OPIO, Artifact, BigParameter, FunctionOP, Parameter
from dflow_async._op import current_context as _context
from dflow_async.dflow._paths import import_tree
from dflow_async.dflow._unsupported import refuse
from dflow_async.dflow._values import artifact_shape, from_dflow, to_dflow
from dflow_async.exceptions import FatalError, TransientError

__all__ = [
    "KEY_PORT",
    "ORIGIN_PREFIX",
    "AdaptOptions",
    "ForeignOP",
    "SignPlan",
    "adapt_foreign_op",
    "register_reuse",
    "translate_sign",
    "unregister_reuse",
]

#: The hidden input carrying a step's rendered key to the OP (Dflow's ``dflow_key``).
KEY_PORT = "dflow_key"
#: Hidden inputs carrying an artifact's producer paths (see :mod:`._values`).
ORIGIN_PREFIX = "dflow_origin_"

# run id -> rendered step key -> {"parameters": {...}, "artifacts": {...}}
_REUSE: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
_ENV_LOCK = threading.RLock()


def register_reuse(run_id: str, table: dict[str, dict[str, dict[str, Any]]]) -> None:
    _REUSE[run_id] = table


def unregister_reuse(run_id: str) -> None:
    _REUSE.pop(run_id, None)


# ------------------------------------------------------------------------------- signs


@dataclass(frozen=True)
class SignPlan:
    ports: dict[str, Any]  # native Parameter/Artifact by port name
    shapes: dict[str, str]  # artifact port -> how Dflow types its value (str, list_path...)


class _Parameter(Parameter):
    """A Dflow OP's parameter: None passes whatever the type, as Dflow's sign check skips None
    (dpgen2 hands ``exploration_report=None`` to a ``BigParameter(ExplorationReport)``). The
    type stays as declared, for the checks of the workflow before it runs."""

    __slots__ = ()
    accepts_none = True


class _BigParameter(BigParameter):
    __slots__ = ()
    accepts_none = True


def _kind(sign: Any) -> str | None:
    if isinstance(sign, Parameter | Artifact):
        return "native"
    names = [c.__name__ for c in type(sign).__mro__]
    for kind in ("Artifact", "BigParameter", "Parameter"):
        if kind in names:
            return kind
    return None


def translate_sign(
    sign: Mapping[str, Any], direction: str, defaults: Mapping[str, Any] | None = None
) -> SignPlan:
    """Native ports for a Dflow sign; ``defaults`` overrides output parameter defaults."""
    defaults = defaults or {}
    ports: dict[str, Any] = {}
    shapes: dict[str, str] = {}
    for name, s in sign.items():
        kind = _kind(s)
        if kind == "native":
            ports[name] = s
        elif kind == "Artifact":
            if direction == "output" and getattr(s, "save", None):
                refuse(f"Artifact(save=...) on output {name!r}", "artifacts stay in the run store")
            shapes[name] = artifact_shape(s.type, name)
            # Any: Dflow lets a list of files feed a Path input (and the reverse); the wrapper
            # converts values to the declared type itself
            ports[name] = Artifact(Any, optional=bool(getattr(s, "optional", False)))
        elif kind in ("Parameter", "BigParameter"):
            default = defaults.get(name, getattr(s, "default", MISSING))
            cls = _BigParameter if kind == "BigParameter" else _Parameter
            ports[name] = cls(s.type, default)
        else:  # a bare type
            ports[name] = _Parameter(s, defaults.get(name, MISSING))
    return SignPlan(ports, shapes)


def _dflow_error(exc: BaseException) -> BaseException:
    """pydflow's TransientError/FatalError as the native classes (by name: no import)."""
    if isinstance(exc, TransientError | FatalError):
        return exc
    for cls in type(exc).__mro__:
        if cls.__module__.split(".")[0] == "dflow":
            if cls.__name__ == "TransientError":
                return TransientError(f"{type(exc).__name__}: {exc}")
            if cls.__name__ == "FatalError":
                return FatalError(f"{type(exc).__name__}: {exc}")
    return exc


@contextlib.contextmanager
def _environment(envs: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """The template's ``envs`` in ``os.environ`` while the OP runs.

    The environment is process-wide, so OPs with envs run one at a time in a process (the lock);
    OPs without envs are not slowed down.
    """
    if not envs:
        yield
        return
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k, _ in envs}
        os.environ.update(dict(envs))
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# ------------------------------------------------------------------------------- wrapper


@dataclass(frozen=True)
class AdaptOptions:
    """What a ``PythonOPTemplate`` adds to its OP."""

    envs: tuple[tuple[str, str], ...] = ()
    output_defaults: tuple[tuple[str, Any], ...] = field(default=(), hash=False)
    key_port: bool = False
    origin_ports: tuple[str, ...] = ()  # artifact ports that also get their unmaterialised value


_DEFAULT = AdaptOptions()


class ForeignOP(FunctionOP):
    """A native OP running a Dflow-style OP class or instance."""

    def __init__(self, foreign: Any, options: AdaptOptions = _DEFAULT) -> None:
        cls: Any = foreign if isinstance(foreign, type) else type(foreign)
        inp = translate_sign(cls.get_input_sign(), "input")
        out = translate_sign(cls.get_output_sign(), "output", dict(options.output_defaults))
        inputs = dict(inp.ports)
        if options.key_port:
            inputs[KEY_PORT] = Parameter(Any, None)
        self._origin_ports = tuple(p for p in options.origin_ports if p in inp.shapes)
        for port in self._origin_ports:
            inputs[ORIGIN_PREFIX + port] = Parameter(Any, None)
        super().__init__(cls.execute, inputs, out.ports, False)
        self._foreign = foreign
        self._cls = cls
        self._options = options
        self._in_shapes = inp.shapes
        self._out_shapes = out.shapes
        self._in_view: Any = None
        self._out_view: Any = None
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__
        # the core calls an async FunctionOP's ``fn`` directly; a Dflow OP must go through
        # ``execute`` (which awaits in the worker thread if it is ``async def``)
        self._is_async = False

    @property
    def foreign(self) -> Any:
        return self._foreign

    # Dflow code reaches the ports of a step's template (``step.template.outputs.parameters
    # ["x"].global_name = "x"``, as dpgen2's loop does): a compatibility step's template is this
    # wrapper, so it offers Dflow-shaped views of the signs. They describe the OP; changing
    # them changes nothing (global names have no meaning without Argo).
    @property
    def inputs(self) -> Any:
        if self._in_view is None:
            from dflow_async.dflow._io import InputArtifact, InputParameter, Inputs

            ports = self.input_ports()
            self._in_view = Inputs(
                {
                    n: InputParameter(type=p.type, **({} if p.required else {"value": p.default}))
                    for n, p in ports.items()
                    if n not in self._in_shapes
                    and n != KEY_PORT
                    and not n.startswith(ORIGIN_PREFIX)
                },
                {n: InputArtifact(optional=not ports[n].required) for n in self._in_shapes},
            )
        return self._in_view

    @property
    def outputs(self) -> Any:
        if self._out_view is None:
            from dflow_async.dflow._io import OutputArtifact, OutputParameter, Outputs

            ports = self.output_ports()
            self._out_view = Outputs(
                {
                    n: OutputParameter(
                        type=p.type, **({} if p.required else {"default": p.default})
                    )
                    for n, p in ports.items()
                    if n not in self._out_shapes
                },
                {n: OutputArtifact() for n in self._out_shapes},
            )
        return self._out_view

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._foreign(*args, **kwargs)

    def execute(self, op_in: OPIO) -> Any:
        ctx = _context()
        workdir = ctx.workdir
        values = dict(op_in)
        key = values.pop(KEY_PORT, None) if self._options.key_port else None
        origins = {p: values.pop(ORIGIN_PREFIX + p, None) for p in self._origin_ports}
        if key is not None:
            entry = _REUSE.get(ctx.run_id, {}).get(str(key))
            if entry is not None:
                return self._reused(entry, workdir)
        instance = self._cls() if isinstance(self._foreign, type) else self._foreign
        with contextlib.suppress(Exception):  # an OP may forbid new attributes
            instance.key = key
            instance.workflow_name = ctx.run_id
        shapes = self._in_shapes
        dflow_in = OPIO(
            {
                n: to_dflow(v, shapes[n], n, workdir, origins.get(n)) if n in shapes else v
                for n, v in values.items()
            }
        )
        try:
            with _environment(self._options.envs):
                result = instance.execute(dflow_in)
        except Exception as exc:
            translated = _dflow_error(exc)
            if translated is exc:
                raise
            raise translated from exc
        if inspect.isawaitable(result):
            return self._finish_async(result, workdir)
        return self._dflow_outputs(result, workdir)

    async def _finish_async(self, awaitable: Any, workdir: Path) -> Any:
        try:
            result = await awaitable
        except Exception as exc:
            translated = _dflow_error(exc)
            if translated is exc:
                raise
            raise translated from exc
        return self._dflow_outputs(result, workdir)

    def _dflow_outputs(self, result: Any, workdir: Path) -> Any:
        if not isinstance(result, Mapping):
            return result  # the scheduler reports the wrong type with the OP's name
        name = self.__qualname__
        return OPIO(
            {
                n: from_dflow(v, n, workdir, name) if n in self._out_shapes else v
                for n, v in result.items()
            }
        )

    def _reused(self, entry: dict[str, dict[str, Any]], workdir: Path) -> OPIO:
        out: dict[str, Any] = {}
        for name in self.output_ports():
            if name in entry["parameters"]:
                out[name] = entry["parameters"][name]
            elif name in entry["artifacts"]:
                root = workdir / ".dflow" / "reused" / name
                out[name] = import_tree(entry["artifacts"][name], root)
        return OPIO(out)

    def __reduce__(self) -> Any:
        # rebuilt from the Dflow OP in the worker; the re-use tables travel along (they are
        # small: outputs of the re-used steps) so process workers see them too
        return (_rebuild, (self._foreign, self._options, dict(_REUSE)))

    def __repr__(self) -> str:
        return f"<Dflow OP {self.__module__}.{self.__qualname__}>"


def _rebuild(foreign: Any, options: AdaptOptions, reuse: dict[str, Any]) -> ForeignOP:
    _REUSE.update(reuse)
    return ForeignOP(foreign, options)


_CACHE: weakref.WeakKeyDictionary[type, ForeignOP] = weakref.WeakKeyDictionary()


def adapt_foreign_op(template: Any, options: AdaptOptions | None = None) -> OP:
    """A native OP for a Dflow-style OP class or instance (pydflow's or ours)."""
    if isinstance(template, OP):
        return template
    options = options or _DEFAULT
    if isinstance(template, type) and options == _DEFAULT:
        cached = _CACHE.get(template)
        if cached is None:
            cached = _CACHE[template] = ForeignOP(template)
        return cached
    return ForeignOP(template, options)
