"""Artifact values as Dflow OPs see them, and back.

Dflow hands ``execute`` an artifact typed by its sign: ``Artifact(str)`` a ``str``,
``Artifact(List[Path])`` a list of ``Path``, ``Artifact(Path)`` given several files one
directory holding them at their relative names (``task.0000/POSCAR``...). The scheduler passes
artifacts as paths, and may *materialise* list inputs from the artifact store as
``.inputs/<port>/<i>/<file name>``, which loses those relative names. The compatibility ``Step``
therefore also passes each artifact's unmaterialised value (its *origin*: the producer's paths)
as a hidden parameter, and the names are rebuilt from it here.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

from dflow_async._op import artifact_leaves
from dflow_async.dflow._paths import import_tree, placed
from dflow_async.dflow._unsupported import refuse
from dflow_async.exceptions import ArtifactError

__all__ = ["artifact_shape", "from_dflow", "to_dflow"]


def artifact_shape(tp: Any, port: str) -> str:
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
    if name == "HDF5Datasets":
        refuse(f"Artifact(HDF5Datasets) (port {port!r})", "pass the files as Artifact(List[Path])")
    files = [a for a in args if getattr(a, "__name__", "") != "HDF5Datasets"]
    if origin in (typing.Union, types.UnionType) and len(files) == 1:
        # Union[List[Path], HDF5Datasets] (dpgen2's trajs): files, or HDF5 datasets, which
        # nothing here produces (an HDF5Datasets output is refused): the files' shape
        return artifact_shape(files[0], port)
    if origin in (list, set) and args:
        return f"{origin.__name__}_{'str' if args[0] is str else 'path'}"
    if origin is dict and len(args) == 2:
        return "dict_str" if args[1] is str else "dict_path"
    return "any"


# ------------------------------------------------------------------------------- inputs


def to_dflow(value: Any, shape: str, port: str, workdir: Path, origin: Any = None) -> Any:
    """A native artifact value (paths) as Dflow hands it to ``execute`` for this shape."""
    if value is None or shape == "any":
        return value
    root = workdir / ".dflow" / "inputs" / port
    several = isinstance(value, list | tuple | dict)
    # a single path needs its name too: a slice of a list is fetched as .inputs/<port>/<file>
    names = _names(value, origin) if several or origin is not None else None
    one = isinstance(value, list | tuple) and len(value) == 1
    if shape in ("str", "path") and several and not one:
        return _typed(_gather(value, names, root), shape)
    if names is not None and _materialised(value, origin):
        value = _relink(value, iter(names), root)  # Dflow's directories, not .inputs/<i>/
    if shape in ("str", "path"):
        return _typed(value[0] if one else value, shape)
    conv = str if shape.endswith("str") else Path
    if shape.startswith(("list", "set")):
        items = artifact_leaves(value) if several else [value]
        items = [None if v is None else conv(v) for v in items]
        return set(items) if shape.startswith("set") else items
    if shape.startswith("dict"):
        if isinstance(value, list | tuple):
            value = {str(i): v for i, v in enumerate(value)}
        elif not isinstance(value, dict):
            value = {Path(value).name: value}
        return {k: None if v is None else conv(v) for k, v in value.items()}
    return _map_leaves(value, conv)  # nested dicts


def _typed(path: Any, shape: str) -> str | Path:
    return str(path) if shape == "str" else Path(path)


def _names(value: Any, origin: Any) -> list[str] | None:
    """Each leaf's relative name, from the origin when it has the same shape."""
    source = origin
    if len(artifact_leaves(origin)) != len(artifact_leaves(value)) or not _same_shape(
        value, origin
    ):
        source = value
    return [name or Path(str(p)).name for name, p in placed(source)]


def _same_shape(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys()
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b)
    return not isinstance(b, list | tuple | dict)


def _materialised(value: Any, origin: Any) -> bool:
    if origin is None:
        return False
    pairs = zip(artifact_leaves(value), artifact_leaves(origin), strict=False)
    return any(os.fspath(v) != os.fspath(o) for v, o in pairs if v is not None and o is not None)


def _gather(value: Any, names: list[str] | None, root: Path) -> Path:
    """Several files for one path input: a directory holding them at their relative names."""
    root.mkdir(parents=True, exist_ok=True)
    for src, name in zip(artifact_leaves(value), names or [], strict=False):
        if src is not None:
            _symlink(src, root / (name or Path(src).name))
    return root


def _relink(value: Any, names: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {k: _relink(v, names, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_relink(v, names, root) for v in value]
    name = next(names)
    if value is None or not name:
        return value
    target = root / name
    return target if _symlink(value, target) else value


def _symlink(src: Any, target: Path) -> bool:
    """Link ``target`` to ``src``; False when the name is already taken by another file."""
    source = os.path.abspath(src)
    if os.path.lexists(target):
        return bool(os.path.realpath(target) == os.path.realpath(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)
    return True


def _map_leaves(value: Any, fn: Any) -> Any:
    if isinstance(value, dict):
        return {k: _map_leaves(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_leaves(v, fn) for v in value]
    return None if value is None else fn(value)


# ------------------------------------------------------------------------------- outputs


def from_dflow(value: Any, port: str, workdir: Path, op: str) -> Any:
    """An output artifact as the scheduler wants it: paths inside the work directory."""
    if value is None:
        return None
    if isinstance(value, set | frozenset):
        value = sorted(value, key=str)
    if isinstance(value, dict):
        return {k: from_dflow(v, port, workdir, op) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if any(v is None for v in value):
            raise ArtifactError(
                f"OP {op!r} output artifact {port!r} holds None entries; dflow-async cannot "
                "store holes in a list artifact yet: leave the failed items out"
            )
        return [from_dflow(v, port, workdir, op) for v in value]
    path = Path(value)
    full = path if path.is_absolute() else workdir / path
    real, root = os.path.realpath(full), os.path.realpath(workdir)
    if real == root or real.startswith(root + os.sep) or not os.path.lexists(full):
        return value  # inside (or missing: the scheduler reports it with the port's name)
    # Dflow copies outputs wherever they are; the scheduler only keeps what is in the work
    # directory, so link the file (or tree) in
    return import_tree(real, workdir / ".dflow" / "outputs" / port)
