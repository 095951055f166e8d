"""Moving artifacts in and out of runs: ``upload_artifact`` and ``download_artifact``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dflow_async._store import ArtifactStore
from dflow_async._store_local import copy_writable
from dflow_async._stored import StoredPath, home_store
from dflow_async.exceptions import ArtifactError

__all__ = ["download_artifact", "upload_artifact"]


def _store(
    store: str | os.PathLike[str] | ArtifactStore | None, options: dict[str, Any] | None
) -> ArtifactStore:
    if isinstance(store, ArtifactStore):
        return store
    from dflow_async._workflow import Workflow

    # the same rule a Workflow uses: a local store keeps artifacts in <store>/artifacts
    return Workflow("upload", store=store, storage_options=options).artifact_store()


def upload_artifact(
    path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | dict[str, Any],
    *,
    store: str | os.PathLike[str] | ArtifactStore | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """Commit local files/directories to the artifact store (content-addressed: the same data
    is stored once). Returns paths carrying their store reference, in the same shape (one
    path, a list, or a dict), ready for ``Step(artifacts={...})`` on any executor."""
    target = _store(store, storage_options)
    if isinstance(path, dict):
        return {k: upload_artifact(v, store=target) for k, v in path.items()}
    if not isinstance(path, str | os.PathLike):
        return [upload_artifact(p, store=target) for p in path]
    src = Path(path).absolute()
    if not src.exists():
        raise ArtifactError(f"upload_artifact: {str(src)!r} does not exist")
    # copied, not linked: the user's files stay theirs (writable, not aliased to objects)
    return StoredPath(src, target.put(src, producer="upload_artifact", link=False))


def download_artifact(
    artifact: Any,
    path: str | os.PathLike[str] = ".",
    *,
    store: str | os.PathLike[str] | ArtifactStore | None = None,
    storage_options: dict[str, Any] | None = None,
    skip_exists: bool = False,
) -> list[Path | None]:
    """Copy an artifact — a step record's ``outputs.artifacts["y"]``: a path, or a list/dict
    of them — into the directory ``path``; returns the local copies (writable, yours), one
    per path in the artifact, in order: ``None`` where the artifact has ``None`` (a fan-out's
    slice that failed or produced nothing).

    A path that exists here is copied; otherwise its bytes are fetched from the store (pass
    ``store=`` for a remote one) and verified."""
    if artifact is None:
        raise ArtifactError("download_artifact: the artifact is None (its step produced nothing)")
    copies: list[Path | None] = []
    for sub, src in _leaves(artifact, Path(path)):
        if src is None:
            copies.append(None)
            continue
        dest = sub
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / src.name
        if target.exists() and skip_exists:
            copies.append(target)
            continue
        ref = getattr(src, "ref", None)
        if not src.exists():
            if ref is None:
                raise ArtifactError(f"download_artifact: {str(src)!r} no longer exists")
            source = _store(store, storage_options) if store is not None else _home_of(ref)
            copies.append(source.get(ref, dest, verify=True, link=False))
            continue
        if src.is_dir():  # its files may be read-only links of stored objects: not copy2
            shutil.copytree(
                src, target, symlinks=True, dirs_exist_ok=True, copy_function=copy_writable
            )
        else:
            copy_writable(src, target)
        copies.append(target)
    return copies


def _home_of(ref: Any) -> ArtifactStore:
    """The store a reference was committed to: a record's artifacts download without naming
    their store."""
    return home_store(ref) or _store(None, None)


def _leaves(value: Any, dest: Path) -> list[tuple[Path, Path | None]]:
    """(directory to copy into, source) pairs. Elements of a list or dict whose names clash
    (slices all writing ``out.txt``) go to ``dest/<index>/`` or ``dest/<key>/``. ``None``
    (a failed slice's hole) has nothing to copy: its source is None."""
    if value is None:
        return [(dest, None)]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, dest / str(k))]
    if isinstance(value, list | tuple):
        names = [Path(v).name for v in value if isinstance(v, str | os.PathLike)]
        clash = len(set(names)) < len(names)
        return [
            p for i, v in enumerate(value) for p in _leaves(v, dest / str(i) if clash else dest)
        ]
    if isinstance(value, Path):
        return [(dest, value)]
    if isinstance(value, str | os.PathLike):
        return [(dest, Path(value))]
    raise _not_an_artifact(value)


def _not_an_artifact(value: Any) -> TypeError:
    """What ``download_artifact`` says of a value that holds no files: a parameter's value,
    a workflow-time reference (``step.outputs.artifacts["y"]``), a whole step record."""
    from dflow_async._graph import OutputRef, Step
    from dflow_async._records import StepRecord
    from dflow_async._refs import Ref

    takes = (
        "it takes an artifact of a finished run, a step record's outputs.artifacts[name] "
        "(result.query_step(name=...)[0].outputs.artifacts['y']): a path, or a list/dict "
        "of them"
    )
    if isinstance(value, OutputRef):
        step, name = value.step.name, value.name
        if value.kind == "artifacts":
            got = (
                f"{value!r}, the workflow's reference to an output of step {step!r}: it has "
                "no files until the workflow runs; run it, then download "
                f"result.query_step(name={step!r})[0].outputs.artifacts[{name!r}]"
            )
        else:
            got = (
                f"{value!r}, output parameter {name!r} of step {step!r}: a parameter holds "
                f"no files (its value, once the workflow ran, is result.query_step(name="
                f"{step!r})[0].outputs.parameters[{name!r}]); {takes}"
            )
    elif isinstance(value, Ref):
        got = f"{value!r}, a reference that has a value only while the workflow runs; {takes}"
    elif isinstance(value, StepRecord):
        have = ", ".join(sorted(value.outputs.artifacts)) or "none"
        got = (
            f"the record of step {value.path!r}: pass one of its artifacts, "
            f"record.outputs.artifacts[name] (it has: {have})"
        )
    elif isinstance(value, Step):
        got = (
            f"step {value.name!r} itself: once the workflow ran, download one of its output "
            f"artifacts, result.query_step(name={value.name!r})[0].outputs.artifacts[name]"
        )
    else:
        guess = " (a parameter's value?)" if isinstance(value, int | float | bytes) else ""
        got = f"{type(value).__name__} {value!r:.60}, which holds no files{guess}; {takes}"
    return TypeError(f"download_artifact: got {got}")
