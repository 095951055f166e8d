"""Store repairs seen from the outside: what users get from download_artifact, and the
execute bits of materialised files on every kind of store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dflow_async import Artifact, Step, Workflow, op


@op
def produce_dir_and_file() -> {"d": Artifact(Path), "f": Artifact(Path)}:  # type: ignore[valid-type]
    Path("d").mkdir()
    Path("d/a.txt").write_text("a")
    Path("d/run.sh").write_text("#!/bin/sh\n")
    os.chmod("d/run.sh", 0o755)
    Path("f.txt").write_text("f")
    return {"d": Path("d"), "f": Path("f.txt")}


def test_downloads_are_writable_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory downloaded while its producer's work dir exists was copied with the mode of
    the stored objects it holds (0o400): download_artifact promises writable files."""
    from dflow_async import download_artifact

    monkeypatch.chdir(tmp_path)
    wf = Workflow("dl", store=str(tmp_path / "s"))
    wf.add(Step("p", produce_dir_and_file))
    res = wf.run(executor="inline")
    arts = res.records[0].outputs.artifacts
    assert Path(arts["d"]).exists()  # copied from the work dir, not fetched from the store
    (d,) = download_artifact(arts["d"], tmp_path / "out")
    (f,) = download_artifact(arts["f"], tmp_path / "out")
    modes = {p.name: p.stat().st_mode & 0o777 for p in [d / "a.txt", d / "run.sh", f]}
    assert modes == {"a.txt": 0o644, "run.sh": 0o755, "f.txt": 0o644}
    (d / "a.txt").write_text("mine")  # and not the stored object's inode
    assert (Path(arts["d"]) / "a.txt").read_text() == "a"
