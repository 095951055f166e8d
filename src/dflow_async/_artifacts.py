"""Moving artifacts in and out of runs: ``upload_artifact`` and ``download_artifact``.

This first version keeps artifacts on the local filesystem: an upload is copied once into
``<store>/uploads/<sha256>/<name>`` (content-addressed, so uploading the same data twice
stores it once) and steps read it in place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dflow_async.exceptions import ArtifactError

__all__ = ["download_artifact", "upload_artifact"]


def upload_artifact(
    path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | dict[str, Any],
    *,
    store: str | os.PathLike[str] | None = None,
) -> Any:
    """Copy local files/directories into the store; returns the stored path(s), in the same
    shape (one path, a list, or a dict), ready for ``Step(artifacts={...})``."""
    if isinstance(path, dict):
        return {k: upload_artifact(v, store=store) for k, v in path.items()}
    if not isinstance(path, str | os.PathLike):
        return [upload_artifact(p, store=store) for p in path]
    from dflow_async._workflow import default_store

    src = Path(path)
    if not src.exists():
        raise ArtifactError(f"upload_artifact: {str(src)!r} does not exist")
    root = (Path(store) if store is not None else default_store()).absolute() / "uploads"
    digest = _digest(src)
    target = root / digest / src.name
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".upload-"))
    try:
        if src.is_dir():
            shutil.copytree(src, staging / src.name, symlinks=True)
        else:
            shutil.copy2(src, staging / src.name)
        try:
            os.rename(staging, root / digest)  # atomic: readers see all of it or nothing
        except OSError:
            if not target.exists():  # not a concurrent upload of the same content
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_artifact(
    artifact: Any, path: str | os.PathLike[str] = ".", *, skip_exists: bool = False
) -> list[Path]:
    """Copy an artifact (a path, or a list/dict of paths, e.g. a step record's
    ``outputs.artifacts["y"]``) into the directory ``path``; returns the local copies."""
    from dflow_async._op import artifact_paths

    if artifact is None:
        raise ArtifactError("download_artifact: the artifact is None (its step produced nothing)")
    dest = Path(path)
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for src in artifact_paths(artifact):
        if not src.exists():
            raise ArtifactError(f"download_artifact: {str(src)!r} no longer exists")
        target = dest / src.name
        if target.exists() and skip_exists:
            copies.append(target)
            continue
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
        copies.append(target)
    return copies


def _digest(src: Path) -> str:
    h = hashlib.sha256()
    if src.is_dir():
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(src)).encode() + b"\0")
            _update(h, f)
    else:
        _update(h, src)
    return h.hexdigest()


def _update(h: Any, file: Path) -> None:
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
