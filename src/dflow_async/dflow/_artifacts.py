"""Dflow's ``upload_artifact`` / ``download_artifact`` over the local run store.

Dflow keeps an artifact's layout relative to where it came from: uploading ``task.0/POSCAR``
from the current directory and downloading it later yields ``./task.0/POSCAR``; downloading a
step's output yields the paths the OP returned (``task.0003/OUTCAR``). Uploads are stored as
``<store>/uploads/<digest>/<relative path>`` so the layout survives, and downloads place every
file by its relative name (:func:`dflow_async.dflow._paths.placed`: slices' files that share a
name are kept apart under ``<slice>/``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dflow_async._artifacts import download_artifact as _native_download
from dflow_async._refs import Ref
from dflow_async.dflow._paths import placed
from dflow_async.dflow._unsupported import refuse
from dflow_async.exceptions import ArtifactError

__all__ = ["LocalArtifact", "artifact_value", "download_artifact", "upload_artifact"]


class LocalArtifact:
    """An artifact in the local store (what ``upload_artifact`` returns); ``local_path`` is a
    path, or a list/dict of paths, as passed to the OP."""

    def __init__(self, local_path: Any) -> None:
        self.local_path = local_path

    def sub_path(self, path: str) -> LocalArtifact:
        """The part of this (single-path) artifact at ``path``."""
        if not isinstance(self.local_path, str | os.PathLike):
            raise ArtifactError("sub_path() needs an artifact holding a single path")
        return LocalArtifact(Path(self.local_path) / path)

    @property
    def path_list(self) -> list[str]:
        return [name for name, _ in placed(self.local_path)]

    def __repr__(self) -> str:
        return f"LocalArtifact({self.local_path!r})"


def artifact_value(value: Any) -> Any:
    """What a Step artifact binding means natively: a reference, or path(s)."""
    if value is None or isinstance(value, Ref | str | os.PathLike):
        return value
    if hasattr(value, "local_path"):  # ours, an ArgoStep artifact, pydflow's LocalArtifact
        return value.local_path
    if isinstance(value, list | tuple):
        return [artifact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: artifact_value(v) for k, v in value.items()}
    if hasattr(value, "key") and type(value).__name__ == "S3Artifact":
        refuse("S3Artifact", "upload the files with upload_artifact() instead")
    return value


def upload_artifact(
    path: str | os.PathLike[str] | Iterable[Any] | dict[str, Any],
    archive: str | None = "default",
    namespace: str | None = None,
    dataset_name: str | None = None,
    **kwargs: Any,
) -> LocalArtifact:
    """Copy files or directories into the store; keeps paths relative to the current
    directory (``task.0/POSCAR`` stays ``task.0/POSCAR``). Storage options are ignored."""
    from dflow_async.dflow._config import store_root

    root = store_root() / "uploads"
    return LocalArtifact(_upload(path, root, Path.cwd()))


def _upload(path: Any, root: Path, cwd: Path) -> Any:
    if path is None:
        return None
    if isinstance(path, dict):
        return {k: _upload(v, root, cwd) for k, v in path.items()}
    if isinstance(path, list | tuple | set):
        return [_upload(p, root, cwd) for p in path]
    src = Path(path)
    if not src.exists():
        raise ArtifactError(f"upload_artifact: File or directory {str(src)!r} not found")
    absolute = src.absolute()
    try:
        rel = absolute.relative_to(cwd)
    except ValueError:
        rel = absolute.relative_to(absolute.anchor)
    digest = hashlib.sha256(str(rel).encode() + b"\0" + _digest(src).encode()).hexdigest()
    target = root / digest / rel
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".upload-"))
    try:
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True)
        else:
            shutil.copy2(src, dest)
        try:
            os.rename(staging, root / digest)  # atomic: all of it or nothing
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_artifact(
    artifact: Any,
    extract: bool = True,
    sub_path: str | None = None,
    slice: int | None = None,
    path: str | os.PathLike[str] = ".",
    remove_catalog: bool = True,
    skip_exists: bool = False,
    **kwargs: Any,
) -> Any:
    """Copy an artifact into ``path``, each file at its relative name; returns the copies
    (a list, or a dict for a dict artifact). ``slice=i`` takes one item of a list artifact,
    ``sub_path`` a part of a single-path artifact."""
    value = artifact_value(artifact)
    if isinstance(value, Ref):
        raise ArtifactError("download_artifact needs a finished step's artifact, not a reference")
    if value is None:
        raise ArtifactError("download_artifact: the artifact is empty (its step produced nothing)")
    if slice is not None:
        value = value[slice]
    dest = Path(path)
    if sub_path is not None:
        src = Path(value) / sub_path
        return [_copy(src, dest / Path(sub_path).parent / src.name, skip_exists)]
    copies = iter([_copy(p, dest / (name or "."), skip_exists) for name, p in placed(value)])
    if isinstance(value, dict):  # each key's copies, in the order placed() lists them
        return {k: [next(copies) for _ in placed(v)] for k, v in value.items()}
    return list(copies)


def _digest(src: Path) -> str:
    """sha256 of a file, or of a tree's relative names and contents."""
    h = hashlib.sha256()
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    for f in files:
        if src.is_dir():
            h.update(str(f.relative_to(src)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _copy(src: Any, target: Path, skip_exists: bool) -> str:
    """``src`` as a writable copy at ``target``: copied where it still is, else fetched from
    the store by the reference it carries (the native download does both)."""
    if target.exists() and skip_exists:
        return str(target)
    src = src if isinstance(src, Path) else Path(src)  # a StoredPath keeps its reference
    if src.name == target.name:
        (copy,) = _native_download(src, target.parent, **_remote())
        return str(copy)
    # a whole work directory (no relative name): Dflow puts its contents at ``target``
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
        (copy,) = _native_download(src, tmp, **_remote())
        assert copy is not None
        shutil.copytree(copy, target, symlinks=True, dirs_exist_ok=True)
    return str(target)


def _remote() -> dict[str, Any]:
    """The configured object store and its ``s3_config`` options, when there are options:
    fetches then reach MinIO (the native download reads the store off the reference, with
    only AWS_* settings)."""
    from dflow_async.dflow._config import storage_options, store_url

    store = store_url()
    options = storage_options(store)
    return {"store": store, "storage_options": options} if options else {}
