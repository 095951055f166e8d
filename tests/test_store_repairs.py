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


@pytest.mark.parametrize("where", ["local", "memory"])
def test_execute_bits_follow_the_file_not_the_object(tmp_path: Path, where: str) -> None:
    """One object serves an executable and a plain file of the same bytes: locally a plain
    file was materialised as a link of the executable object (so executable), and on
    memory:// (or S3) a single executable file lost its execute bit."""
    from dflow_async import ArtifactStore

    url = str(tmp_path / "s") if where == "local" else f"memory://exec-{tmp_path.name}"
    store = ArtifactStore(url, cache_dir=tmp_path / "cache")
    body = b"#!/bin/sh\necho hi\n"
    (tmp_path / "tools").mkdir()
    (tmp_path / "data").mkdir()
    for d, mode in (("tools", 0o755), ("data", 0o644)):
        (tmp_path / d / "x").write_bytes(body)
        os.chmod(tmp_path / d / "x", mode)
    (tmp_path / "script").write_bytes(body)
    os.chmod(tmp_path / "script", 0o755)
    (tmp_path / "plain").write_bytes(body)
    refs = {n: store.put(tmp_path / n) for n in ("script", "tools", "data", "plain")}
    assert refs["script"].executable and not refs["plain"].executable
    assert refs["script"].to_json()["executable"] is True
    assert "executable" not in refs["plain"].to_json()  # plain refs read as they always did
    assert type(refs["script"]).from_json(refs["script"].to_json()) == refs["script"]
    for link in (True, False):
        out = tmp_path / f"out-{link}"
        got = {n: store.get(r, out / n, link=link) for n, r in refs.items()}
        x = {
            n: os.access(p, os.X_OK)
            for n, p in {
                "script": got["script"],
                "tools": got["tools"] / "x",
                "data": got["data"] / "x",
                "plain": got["plain"],
            }.items()
        }
        assert x == {"script": True, "tools": True, "data": False, "plain": False}, link
