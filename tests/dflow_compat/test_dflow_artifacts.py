"""upload_artifact / download_artifact keep Dflow's relative layout; list artifacts given to
an Artifact(Path) input arrive as one directory."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from compat_ops import Cat, Files, Sum, Where, WriteSame, WriteUnlessBad

from dflow_async.dflow import Step, Workflow, download_artifact, upload_artifact
from dflow_async.dflow._paths import import_tree
from dflow_async.dflow.python import PythonOPTemplate, Slices
from dflow_async.exceptions import ArtifactError


def run(*steps: Step) -> Workflow:
    wf = Workflow("arts")
    for s in steps:
        wf.add(s)
    wf.submit()
    wf.wait()
    assert wf.query_status() == "Succeeded"
    return wf


def test_upload_keeps_the_path_relative_to_the_current_directory() -> None:
    Path("task.0").mkdir()
    Path("task.0/POSCAR").write_text("p0")
    art = upload_artifact("task.0/POSCAR")
    assert art.path_list == ["task.0/POSCAR"]
    assert Path(art.local_path).read_text() == "p0"
    assert upload_artifact("task.0/POSCAR").local_path == art.local_path  # stored once
    Path("task.0/POSCAR").write_text("changed")
    assert Path(art.local_path).read_text() == "p0"  # a copy, not a link
    (copy,) = download_artifact(art, path="back")
    assert copy == "back/task.0/POSCAR" and Path(copy).read_text() == "p0"
    with pytest.raises(ArtifactError, match="not found"):
        upload_artifact("missing.txt")


def test_download_a_list_artifact_keeps_each_relative_path() -> None:
    files = Step("files", PythonOPTemplate(Files), parameters={"n": 2})
    wf = run(files)
    (step,) = wf.query_step(name="files")
    got = download_artifact(step.outputs.artifacts["files"], path="dl")
    assert got == ["dl/task.0/data.txt", "dl/task.1/data.txt"]
    assert Path(got[1]).read_text() == "data 1"
    (one,) = download_artifact(step.outputs.artifacts["files"], slice=1, path="one")
    assert one == "one/task.1/data.txt"
    assert step.outputs.parameters["names"].value == ["task.0/data.txt", "task.1/data.txt"]


def test_download_makes_writable_copies_and_falls_back_to_the_store(dflow_home: Path) -> None:
    files = Step("files", PythonOPTemplate(Files), parameters={"n": 2})
    wf = run(files)
    art = wf.query_step(name="files")[0].outputs.artifacts["files"]
    got = download_artifact(art, path="dl")
    assert [stat.S_IMODE(os.stat(g).st_mode) for g in got] == [0o644, 0o644]  # not 0o400
    assert download_artifact(art, path="dl") == got  # over the first copies
    # the work directories are gone (cleaned up, another machine): the store has the bytes
    shutil.rmtree(dflow_home / ".dflow-async" / "runs" / wf.id / "steps")
    art = Workflow(id=wf.id).query_step(name="files")[0].outputs.artifacts["files"]
    got = download_artifact(art, path="again")
    assert got == ["again/task.0/data.txt", "again/task.1/data.txt"]
    assert [Path(g).read_text() for g in got] == ["data 0", "data 1"]


def test_download_a_fan_out_artifact_with_failed_slices() -> None:
    fan = Step(
        "fan",
        PythonOPTemplate(
            WriteUnlessBad,
            slices=Slices("{{item}}", input_parameter=["x"], output_artifact=["out"]),
        ),
        parameters={"x": [0, 1, 2], "bad": [1]},
        with_param=[0, 1, 2],
        continue_on_failed=True,
    )
    wf = run(fan)
    (step,) = wf.query_step(name="fan")
    # the failed slice has no file: the others are copied, each at its relative name
    got = download_artifact(step.outputs.artifacts["out"], path="dl")
    assert got == ["dl/out/0.txt", "dl/out/2.txt"]
    assert Path(got[1]).read_text() == "x=2"
    assert download_artifact(step.outputs.artifacts["out"], slice=1, path="one") == []
    (two,) = download_artifact(step.outputs.artifacts["out"], slice=2, path="two")
    assert Path(two).read_text() == "x=2"


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_slices_writing_the_same_file_name_are_kept_apart(executor: str) -> None:
    # Dflow's Slices(create_dir=True) layout: slice i's files under i/
    fan = Step(
        "fan",
        PythonOPTemplate(
            WriteSame,
            slices=Slices("{{item}}", input_parameter=["x"], output_artifact=["out"]),
        ),
        parameters={"x": [10, 20, 30]},
        with_param=[0, 1, 2],
    )
    out = fan.outputs.artifacts["out"]
    cat = Step("cat", PythonOPTemplate(Cat), artifacts={"dir": out})
    total = Step("total", PythonOPTemplate(Sum), parameters={"ys": []}, artifacts={"files": out})
    wf = Workflow("arts", executor=executor)
    wf.add(fan)
    wf.add([cat, total])
    wf.submit()
    wf.wait()
    assert wf.query_status() == "Succeeded"
    (step,) = wf.query_step(name="cat")
    assert step.outputs.parameters["text"].value == "0/out.txt=10;1/out.txt=20;2/out.txt=30"
    assert wf.query_step(name="total")[0].outputs.parameters["from_files"].value == 60
    (fanned,) = wf.query_step(name="fan")
    art = fanned.outputs.artifacts["out"]
    got = download_artifact(art, path="dl")
    assert got == ["dl/0/out.txt", "dl/1/out.txt", "dl/2/out.txt"]
    assert [Path(g).read_text() for g in got] == ["10", "20", "30"]
    (one,) = download_artifact(art, slice=1, path="one")
    assert one == "one/out.txt" and Path(one).read_text() == "20"


def test_imported_files_of_the_same_name_are_kept_apart(tmp_path: Path) -> None:
    # what a re-used fan-out's artifacts go through: none may replace another
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "out.txt").write_text(d)
    got = import_tree([tmp_path / "a/out.txt", tmp_path / "b/out.txt"], tmp_path / "in")
    assert [p.relative_to(tmp_path / "in").as_posix() for p in got] == ["0/out.txt", "1/out.txt"]
    assert [p.read_text() for p in got] == ["a", "b"]


def test_a_list_artifact_into_a_path_input_is_one_directory() -> None:
    files = Step("files", PythonOPTemplate(Files), parameters={"n": 3})
    cat = Step("cat", PythonOPTemplate(Cat), artifacts={"dir": files.outputs.artifacts["files"]})
    wf = run(files, cat)
    (step,) = wf.query_step(name="cat")
    assert step.outputs.parameters["kinds"].value == ["NoneType", "PosixPath"]
    assert step.outputs.parameters["text"].value == (
        "task.0/data.txt=data 0;task.1/data.txt=data 1;task.2/data.txt=data 2"
    )


def test_a_one_file_list_into_a_path_input_keeps_its_relative_name() -> None:
    files = Step("files", PythonOPTemplate(Files), parameters={"n": 1})
    where = Step(
        "where", PythonOPTemplate(Where), artifacts={"file": files.outputs.artifacts["files"]}
    )
    wf = run(files, where)
    assert wf.query_step(name="where")[0].outputs.parameters["where"].value == "task.0/data.txt"


def test_uploaded_directory_and_file_inputs() -> None:
    Path("in").mkdir()
    Path("in/a.txt").write_text("A")
    Path("in/sub").mkdir()
    Path("in/sub/b.txt").write_text("B")
    Path("single.txt").write_text("S")
    cat = Step(
        "cat",
        PythonOPTemplate(Cat),
        artifacts={"dir": upload_artifact("in"), "file": upload_artifact("single.txt")},
    )
    wf = run(cat)
    (step,) = wf.query_step(name="cat")
    assert step.outputs.parameters["kinds"].value == ["str", "PosixPath"]
    assert step.outputs.parameters["text"].value == "S;a.txt=A;sub/b.txt=B"


def test_none_makes_an_artifact_optional() -> None:
    wf = run(Step("cat", PythonOPTemplate(Cat), artifacts={"file": None, "dir": None}))
    assert wf.query_step(name="cat")[0].outputs.parameters["text"].value == ""
