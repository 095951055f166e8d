"""Step caching: skip a step whose OP and inputs match an earlier success in the same store.

The key is a digest of the OP's identity, its code (source text, else compiled code, with the
values its closures captured) and version, and every input of every slice of the attempt:
parameters by canonical JSON (pickle digest when not JSON), artifacts by the sha256 of their
content. Entries are small JSON files under ``<store>/cache/``; writing one is atomic (temp +
rename).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import pickle
import shutil
import threading
import types
import uuid
import weakref
from pathlib import Path
from typing import Any, Generic, TypeVar

from dflow_async._codec import decode, encode
from dflow_async._op import OP, FunctionOP, op_name, port_plan
from dflow_async._spec import AttemptSpec
from dflow_async._store import ArtifactStore
from dflow_async._store_local import ensure_dir
from dflow_async._stored import BigValue, lost_digests

__all__ = ["StepCache", "changed_ops", "ops_code"]

_T = TypeVar("_T")


class _IdentityMemo(Generic[_T]):
    """Values kept for objects by identity, as long as each object lives, without keeping it
    alive. By id() along with a weak reference: an entry counts only while the reference
    still gives that very object (a freed function's id goes to the next one made, a notebook
    cell's redefinition typically), and it goes when the object does. Not a
    WeakKeyDictionary: that compares keys with ==, and a class's metaclass may define it."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[weakref.ref[Any], _T]] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, obj: Any) -> _T | None:
        entry = self.entries.get(id(obj))
        return entry[1] if entry is not None and entry[0]() is obj else None

    def setdefault(self, obj: Any, value: _T) -> _T:
        """The value kept for ``obj``, ``value`` if none was (kept unless ``obj`` cannot be
        weakly referenced: a builtin function, say)."""
        key = id(obj)
        try:
            ref = weakref.ref(obj, functools.partial(self._forget, key))
        except TypeError:
            return value
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None and entry[0]() is obj:
                return entry[1]  # another thread was first
            self.entries[key] = (ref, value)
        return value

    def _forget(self, key: int, ref: weakref.ref[Any]) -> None:
        # no lock: a callback may run in a collection the locked section set off. And no
        # other object can take the id while this one is being freed
        entry = self.entries.get(key)
        if entry is not None and entry[0] is ref:
            self.entries.pop(key, None)


# per function or class: its code text and captured values' digests, and their nonce
_CODE_DIGESTS: _IdentityMemo[tuple[str, str]] = _IdentityMemo()
# per functools.partial that binds a value which cannot be digested
_NONCES: _IdentityMemo[str] = _IdentityMemo()


def code_digest(op: OP) -> str:
    """The OP's identity, version, source text and the values its closures captured: editing
    the OP's code, or making it again with other captured values, misses the cache."""
    return _op_digest(op, exact=True)


def _op_digest(op: OP, *, exact: bool) -> str:
    target: Any = op.fn if isinstance(op, FunctionOP) else type(op)
    if isinstance(target, functools.partial):
        # what the partial binds is code too: op(partial(f, 3)) is not op(partial(f, 4)).
        # Digested each time (a bound list may be appended to between runs)
        bound = [list(target.args), sorted(target.keywords.items())]
        try:
            bound_digest = _value_digest(bound)
        except Exception:  # cloudpickle cannot pickle one (a lock): as for a closure's
            bound_digest = "<" + ",".join(_type_name(v) for v in _bound_values(target)) + ">"
            if exact:
                bound_digest += _NONCES.setdefault(target, uuid.uuid4().hex)
        inner = _code_digest(op, target.func, exact=exact)
        return hashlib.sha256(f"{inner}\0{bound_digest}".encode()).hexdigest()
    code = _code_digest(op, target, exact=exact)
    # (a function OP's own attributes are its function's: digested above)
    state = None if isinstance(op, FunctionOP) else getattr(op, "__dict__", None)
    if not state:
        return code
    # an OP instance's attributes are its configuration: Scale(k=2) is not Scale(k=5).
    # Digested each time (an instance may be changed between runs)
    try:
        state_digest = _captured_digest(sorted(state.items()))
    except Exception:  # an attribute cloudpickle cannot pickle (a lock): as for a closure's
        state_digest = "<" + ",".join(_type_name(v) for v in state.values()) + ">"
        if exact:
            state_digest += _NONCES.setdefault(op, uuid.uuid4().hex)
    return hashlib.sha256(f"{code}\0{state_digest}".encode()).hexdigest()


def ops_code(root: Any) -> dict[str, str]:
    """``code_digest`` of every OP the compiled workflow ``root`` runs, by OP name: a run's
    journal keeps it, so that a resume can say which OPs were edited since the run began. A
    captured value that cannot be digested (a lock) counts by its type here: making the OP
    again with a new one is no edit."""
    from dflow_async._compile import walk_templates

    seen: set[int] = set()
    found: dict[str, str] = {}
    for ct in walk_templates(root):
        for node in ct.nodes:
            op = node.op
            if op is None or id(op) in seen:
                continue
            seen.add(id(op))
            name = op_name(op)
            digest = _op_digest(op, exact=False)
            # two OPs of one name (partials of one function): both must match
            found[name] = digest if name not in found else found[name] + "+" + digest
    return found


def changed_ops(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """Names of the OPs whose code differs from what a run recorded when it began."""
    return sorted(name for name, digest in now.items() if recorded.get(name, digest) != digest)


def _code_digest(op: OP, target: Any, *, exact: bool) -> str:
    stable, nonce = _target_digest(target)
    if exact and nonce:
        # a captured value that cannot be digested (a lock, a connection): the entry can be
        # found only through this very function object, never through another one made with
        # some other such value, nor from another process
        stable = f"{stable}\0{nonce}"
    text = f"{op_name(op)}\0{getattr(op, 'version', '')}\0{stable}"
    return hashlib.sha256(text.encode()).hexdigest()


def _target_digest(target: Any) -> tuple[str, str]:
    """``target``'s code text (source, else compiled code) with its captured values' digests,
    and a nonce ("" when every captured value could be digested). Kept while target lives."""
    kept = _CODE_DIGESTS.get(target)
    if kept is not None:
        return kept
    text, exact = _target_text(target, set())
    return _CODE_DIGESTS.setdefault(target, (text, "" if exact else uuid.uuid4().hex))


def _target_text(target: Any, seen: set[int]) -> tuple[str, bool]:
    """The source text of a function or class, else (code made by exec, a notebook's class)
    its compiled code, constants included; followed by what its closures captured, when they
    captured anything. The bool is False when some captured value could not be digested."""
    seen.add(id(target))
    try:
        text = inspect.getsource(target)
        sourced = True
    except (OSError, TypeError):
        text, sourced = "", False
    if isinstance(target, type):
        functions = [(f"{name}.", fn) for name, fn in _class_functions(target)]
    elif isinstance(getattr(target, "__code__", None), types.CodeType):
        functions = [("", target)]
    else:
        functions = []
    extras: list[str] = []
    exact = True
    for prefix, fn in functions:
        if not sourced:
            code = hashlib.sha256(_code_text(fn.__code__).encode()).hexdigest()
            extras.append(f"{prefix}code {code}")
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
            if name == "__class__" and isinstance(target, type):
                continue  # the class itself, for super(): its code is what is digested
            value_text, ok = _cell_text(cell, seen)
            exact = exact and ok
            extras.append(f"{prefix}{name}={value_text}")
    if not extras:
        return text, exact  # as before closures were digested: entries made then still hit
    return text + "\0" + "\0".join(extras), exact


def _class_functions(cls: type) -> list[tuple[str, Any]]:
    """The functions a class defines itself (methods, static and class methods, properties'
    accessors), by name."""
    found: list[tuple[str, Any]] = []
    for name, attr in sorted(vars(cls).items()):
        if isinstance(attr, staticmethod | classmethod):
            attr = attr.__func__
        if isinstance(attr, property):
            for part, fn in (("get", attr.fget), ("set", attr.fset), ("del", attr.fdel)):
                if isinstance(fn, types.FunctionType):
                    found.append((f"{name}.{part}", fn))
        elif isinstance(attr, types.FunctionType):
            found.append((name, attr))
    return found


def _cell_text(cell: Any, seen: set[int]) -> tuple[str, bool]:
    """What a closure captured: a function (an @op's too) by its code and captures, since it
    is code; anything else by its pickle, or by its type when it has none."""
    try:
        value = cell.cell_contents
    except ValueError:
        return "<empty>", True
    if isinstance(value, FunctionOP):
        value = value.fn
    if isinstance(value, types.FunctionType):
        if id(value) in seen:  # recursion: its code is in the digest already
            return f"<seen {value.__qualname__}>", True
        text, ok = _target_text(value, seen)
        return "f" + hashlib.sha256(text.encode()).hexdigest(), ok
    try:
        return _captured_digest(value), True
    except Exception:  # cloudpickle cannot pickle it (a lock, a socket): see _code_digest
        return f"<{_type_name(value)}>", False


def _captured_digest(value: Any) -> str:
    """``_value_digest`` without JSON (where a tuple is a list and {1: 2} is {"1": 2}) and
    trying the standard pickle first: it names a class, where cloudpickle copies a script's
    (``__main__``'s) with an id of the process's own, so that a captured instance of one
    would digest otherwise in every process (each resume told that its OP had changed)."""
    try:
        data = pickle.dumps(value, protocol=5)
    except Exception:  # a local class, a lambda
        import cloudpickle

        data = cloudpickle.dumps(value, protocol=5)
    return "p" + hashlib.sha256(data).hexdigest()


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _bound_values(target: functools.partial[Any]) -> list[Any]:
    return [*target.args, *(v for _, v in sorted(target.keywords.items()))]


def _code_text(code: types.CodeType) -> str:
    """Compiled code: its bytecode, and what the bytecode refers to by index (x * 2 and x * 3
    differ in their constants only; x.real and x.imag in their names only)."""
    return "\0".join(  # a repr never holds a NUL: the fields cannot run into each other
        [
            code.co_code.hex(),
            ",".join(_const_text(c) for c in code.co_consts),
            ",".join(code.co_names),
            ",".join(code.co_varnames),
            ",".join(code.co_freevars),
            ",".join(code.co_cellvars),
            f"{code.co_argcount},{code.co_posonlyargcount},{code.co_kwonlyargcount}",
            str(code.co_flags),
        ]
    )


def _const_text(value: Any) -> str:
    if isinstance(value, types.CodeType):  # a nested function, lambda or comprehension
        return f"code({_code_text(value)})"
    if isinstance(value, tuple):
        return "(" + ",".join(_const_text(v) for v in value) + ")"
    if isinstance(value, frozenset):  # `x in {"a", "b"}`: ordered by hash, which varies
        return "frozenset(" + ",".join(sorted(_const_text(v) for v in value)) + ")"
    return f"{type(value).__name__}:{value!r}"


class StepCache:
    def __init__(self, root: Path, store: ArtifactStore | None = None) -> None:
        self.root = root
        self.values = root / "values"
        #: the run's artifact store, which a hit's artifacts and BigParameters must be in:
        #: entries live beside the runs, locally, and outlive what a remote store holds
        self.store = store

    def key(self, spec: AttemptSpec) -> str:
        """Computed in a worker thread: hashing artifacts reads their bytes."""
        op: OP = spec.op
        plan = port_plan(op)
        h = hashlib.sha256(code_digest(op).encode())
        for piece in spec.slices:
            h.update(b"\0slice")
            for name in sorted(piece.inputs):
                value = piece.inputs[name]
                h.update(f"\0{name}=".encode())
                if name in plan.in_artifacts:
                    h.update(_artifact_digest(value).encode())
                else:
                    h.update(_value_digest(value).encode())
        return h.hexdigest()

    def get(self, key: str) -> list[dict[str, Any]] | None:
        path = self.root / f"{key}.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            outputs = decode(text, self.values)
        except (ValueError, OSError):
            return None  # a damaged entry is a miss, never a wrong answer
        for slice_outputs in outputs:
            for value in slice_outputs.values():
                if not _artifacts_exist(value):
                    return None  # the artifacts it points at were deleted
        if self.store is not None:
            # An entry's objects may be gone from the store (a bucket emptied, an S3 server
            # that restarted without its data), or never have been in it (an entry made by a
            # run on another store: all runs on remote stores share ./.dflow-async/cache). A
            # hit would hand consumers references nothing can fetch, and every re-run of the
            # step would hit again: a miss instead runs the step, which commits them afresh.
            try:
                if lost_digests((v for o in outputs for v in o.values()), self.store):
                    return None
            except Exception:  # the store cannot be asked: the step runs (and says why)
                return None
        return list(outputs)

    def put(self, key: str, outputs: Any) -> None:
        ensure_dir(self.root)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        text = encode(list(outputs), self.values)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(text)
        os.replace(tmp, self.root / f"{key}.json")

    def clear(self) -> int:
        if not self.root.exists():
            return 0
        count = sum(1 for _ in self.root.glob("*.json"))
        shutil.rmtree(self.root)
        return count


def _value_digest(value: Any) -> str:
    try:
        text = json.dumps(value, sort_keys=True, default=_no_json)
        return "j" + hashlib.sha256(text.encode()).hexdigest()
    except TypeError:
        import cloudpickle

        return "p" + hashlib.sha256(cloudpickle.dumps(value)).hexdigest()


def _no_json(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, BigValue):
        # by its content's digest alone: pickled, it carries the store object it was loaded
        # with (a fresh output's has one, a cache hit's or a journal's none), so a consumer
        # missed the cache whenever its producer had run rather than hit it
        return f"\0BigParameter {value.ref.digest}"
    raise TypeError


def _artifact_digest(value: Any) -> str:
    from dflow_async._op import artifact_paths

    h = hashlib.sha256()
    if isinstance(value, dict):
        for k in sorted(value):
            h.update(f"{k}:{_artifact_digest(value[k])}".encode())
        return h.hexdigest()
    if isinstance(value, list | tuple):
        for v in value:
            h.update(_artifact_digest(v).encode())
        return h.hexdigest()
    ref = getattr(value, "ref", None)
    if ref is not None:  # committed to the store: its digest is already known
        return str(ref.digest)
    for path in artifact_paths(value):
        h.update(path.name.encode() + b"\0")
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(str(f.relative_to(path)).encode() + b"\0")
                _hash_file(h, f)
        elif path.exists():
            _hash_file(h, path)
    return h.hexdigest()


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def _artifacts_exist(value: Any) -> bool:
    if isinstance(value, Path):
        return value.exists()
    if isinstance(value, list | tuple):
        return all(_artifacts_exist(v) for v in value)
    if isinstance(value, dict):
        return all(_artifacts_exist(v) for v in value.values())
    return True
