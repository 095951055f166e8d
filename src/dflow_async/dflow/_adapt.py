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
import typing
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dflow_async._op import MISSING, OP, OPIO, Artifact, BigParameter, FunctionOP, Parameter
from dflow_async._op import current_context as _context
from dflow_async.dflow._paths import import_tree, symlink_tree
from dflow_async.dflow._unsupported import refuse
from dflow_async.exceptions import ArtifactError, FatalError, TransientError

__all__ = [
    "KEY_PORT",
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


def _kind(sign: Any) -> str | None:
    if isinstance(sign, Parameter | Artifact):
        return "native"
    names = [c.__name__ for c in type(sign).__mro__]
    for kind in ("Artifact", "BigParameter", "Parameter"):
        if kind in names:
            return kind
    return None


def _shape(tp: Any, port: str) -> str:
    """How Dflow types an artifact of declared type ``tp``."""
    name = getattr(tp, "__name__", "")
    if tp is str:
        return "str"
    if tp is Path:
        return "path"
    if name.endswith("NestedDictStr"):
        return "nested_str"
    if name.endswith("NestedDictPath"):
        return "nested_path"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if "HDF5Datasets" in (name, *(getattr(a, "__name__", "") for a in args)):
        refuse(f"Artifact(HDF5Datasets) (port {port!r})", "pass the files as Artifact(List[Path])")
    if origin in (list, set) and args:
        return f"{origin.__name__}_{'str' if args[0] is str else 'path'}"
    if origin is dict and len(args) == 2:
        return "dict_str" if args[1] is str else "dict_path"
    return "any"


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
            shapes[name] = _shape(s.type, name)
            # Any: Dflow lets a list of files feed a Path input (and the reverse); the wrapper
            # converts values to the declared type itself
            ports[name] = Artifact(Any, optional=bool(getattr(s, "optional", False)))
        elif kind in ("Parameter", "BigParameter"):
            default = defaults.get(name, getattr(s, "default", MISSING))
            cls = BigParameter if kind == "BigParameter" else Parameter
            ports[name] = cls(s.type, default)
        else:  # a bare type
            ports[name] = Parameter(s, defaults.get(name, MISSING))
    return SignPlan(ports, shapes)


# ------------------------------------------------------------------------------- values


def _to_dflow(value: Any, shape: str, port: str, workdir: Path) -> Any:
    """A native artifact value (paths) as Dflow hands it to ``execute`` for this shape."""
    if value is None or shape == "any":
        return value
    if shape in ("str", "path"):
        if isinstance(value, list | tuple) and len(value) == 1:
            value = value[0]
        elif isinstance(value, list | tuple | dict):
            value = symlink_tree(value, workdir / ".dflow" / "inputs" / port)
        return str(value) if shape == "str" else Path(value)
    conv = str if shape.endswith("str") else Path
    if shape.startswith(("list", "set")):
        items = [value] if not isinstance(value, list | tuple | dict) else _flat(value)
        items = [None if v is None else conv(v) for v in items]
        return set(items) if shape.startswith("set") else items
    if shape.startswith("dict"):
        if isinstance(value, list | tuple):
            value = {str(i): v for i, v in enumerate(value)}
        elif not isinstance(value, dict):
            value = {Path(value).name: value}
        return {k: None if v is None else conv(v) for k, v in value.items()}
    return _map_leaves(value, conv)  # nested dicts


def _flat(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _flat(v)]
    return [value]


def _map_leaves(value: Any, fn: Any) -> Any:
    if isinstance(value, dict):
        return {k: _map_leaves(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_leaves(v, fn) for v in value]
    return None if value is None else fn(value)


def _from_dflow(value: Any, port: str, workdir: Path, op: str) -> Any:
    """An output artifact as the scheduler wants it: paths inside the work directory."""
    if value is None:
        return None
    if isinstance(value, set | frozenset):
        value = sorted(value, key=str)
    if isinstance(value, dict):
        return {k: _from_dflow(v, port, workdir, op) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if any(v is None for v in value):
            raise ArtifactError(
                f"OP {op!r} output artifact {port!r} holds None entries; dflow-async cannot "
                "store holes in a list artifact yet: leave the failed items out"
            )
        return [_from_dflow(v, port, workdir, op) for v in value]
    path = Path(value)
    full = path if path.is_absolute() else workdir / path
    real, root = os.path.realpath(full), os.path.realpath(workdir)
    if real == root or real.startswith(root + os.sep) or not os.path.lexists(full):
        return value  # inside (or missing: the scheduler reports it with the port's name)
    # Dflow copies outputs wherever they are; the scheduler only keeps what is in the work
    # directory, so link the file (or tree) in
    return import_tree(real, workdir / ".dflow" / "outputs" / port)


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
        super().__init__(cls.execute, inputs, out.ports, False)
        self._foreign = foreign
        self._cls = cls
        self._options = options
        self._in_shapes = inp.shapes
        self._out_shapes = out.shapes
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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._foreign(*args, **kwargs)

    def execute(self, op_in: OPIO) -> Any:
        ctx = _context()
        workdir = ctx.workdir
        values = dict(op_in)
        key = values.pop(KEY_PORT, None) if self._options.key_port else None
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
                n: _to_dflow(v, shapes[n], n, workdir) if n in shapes else v
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
                n: _from_dflow(v, n, workdir, name) if n in self._out_shapes else v
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
