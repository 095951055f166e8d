"""Where an artifact file sits relative to the directory that produced it.

Dflow keeps an artifact's *relative* layout: an OP that returns ``task.0003/OUTCAR`` produces
an artifact that downloads to ``./task.0003/OUTCAR``, and a list of such files handed to an
``Artifact(Path)`` input arrives as one directory holding ``task.0000/OUTCAR``,
``task.0001/OUTCAR``... dflow-async passes artifacts as absolute paths, so the layout is
recovered from where the scheduler puts things:

* step outputs: ``<store>/runs/<run>/steps/<step path>/[s<slice>/]a<attempt>/<relative>``
* uploads:      ``<store>/uploads/<digest>/<relative>``
* files copied into a work directory: ``.../a<attempt>/.dflow/<kind>/<port>/<relative>``
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["import_tree", "link_or_copy", "placed", "relative_name"]

_ATTEMPT = re.compile(r"^a\d+$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def relative_name(path: str | os.PathLike[str]) -> str:
    """The artifact-relative name of ``path`` ("" when it is a whole work directory)."""
    parts = Path(path).parts
    for j in range(2, len(parts)):
        if parts[j] == "steps" and parts[j - 2] == "runs":
            # the first a<N> after the step path is the attempt's work directory (a step
            # named like "a0" would make the name longer, never wrong)
            for k in range(j + 1, len(parts)):
                if _ATTEMPT.match(parts[k]):
                    return "/".join(_inside_workdir(parts[k + 1 :]))
            break
        if parts[j] == ".scratch" and parts[j - 2] == "runs":  # a running attempt's directory
            return "/".join(_inside_workdir(parts[j + 2 :]))
        if parts[j - 1] == "uploads" and _DIGEST.match(parts[j]):
            return "/".join(parts[j + 1 :]) or parts[-1]
    return parts[-1] if parts else ""


def _inside_workdir(rest: tuple[str, ...]) -> tuple[str, ...]:
    # .dflow/<kind>/<port>/...: copied in by this package; .inputs/<port>/...: fetched from the
    # artifact store by the worker (list items as <i>/<file name>)
    if len(rest) >= 3 and rest[0] == ".dflow":
        return rest[3:]
    if len(rest) >= 2 and rest[0] == ".inputs":
        return rest[2:]
    return rest


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Hard-link ``src`` (a file or a tree) at ``dst``; copy where links are impossible.

    Links make re-used and imported artifacts free, and keep them inside the destination work
    directory, which the scheduler requires of output artifacts.
    """
    src_p, dst_p = Path(src), Path(dst)
    dst_p.parent.mkdir(parents=True, exist_ok=True)
    if src_p.is_dir():
        shutil.copytree(src_p, dst_p, symlinks=True, dirs_exist_ok=True, copy_function=_link_file)
    else:
        if dst_p.exists() or dst_p.is_symlink():
            dst_p.unlink()
        _link_file(str(src_p), str(dst_p))
    return dst_p


def _link_file(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def placed(value: Any) -> list[tuple[str, Any]]:
    """(relative name, path) for each path in ``value`` (a path, or a list/dict of them, in
    order; ``None`` holes have none): where Dflow puts it in a directory holding the artifact.

    The elements of a list or dict whose names clash (slices all writing ``out.txt``) are kept
    apart under ``<index>/`` (``<key>/``), as Dflow's ``Slices(create_dir=True)`` does: one
    name per file, so no file hides another."""
    if value is None:
        return []
    if isinstance(value, dict):
        parts = [(str(k), placed(v)) for k, v in value.items()]
    elif isinstance(value, list | tuple | set):
        parts = [(str(i), placed(v)) for i, v in enumerate(value)]
    else:
        return [(relative_name(value), value)]
    pairs = [pair for _, inner in parts for pair in inner]
    names = [name for name, _ in pairs]
    if len(set(names)) == len(names):
        return pairs
    return [(f"{k}/{name}" if name else k, p) for k, inner in parts for name, p in inner]


def import_tree(value: Any, root: Path) -> Any:
    """``value`` (a path, or a list/dict of paths) linked under ``root`` by relative name."""
    return _import(value, iter([name for name, _ in placed(value)]), root)


def _import(value: Any, names: Iterator[str], root: Path) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _import(v, names, root) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_import(v, names, root) for v in value]
    rel = next(names)
    return link_or_copy(value, root / rel if rel else root)
