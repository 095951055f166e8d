"""OP classes written against the real pydflow run unchanged, through the compatibility API
and through the native dflow_async API, on the inline and process executors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dflow_async as da
from dflow_async.dflow import Step, Workflow, upload_artifact
from dflow_async.dflow.python import PythonOPTemplate

pytest.importorskip("dflow", reason="pydflow is not installed (pip install pydflow)")

from pydflow_ops import Flaky, Inspect, MakeFiles, Payload, Sleep, add

EXECUTORS = ["inline", "process"]


def inspect_artifacts(make: Any) -> dict[str, Any]:
    files = make.outputs.artifacts["files"]
    return {
        "as_strs": files,
        "as_set": files,
        "as_dir": files,
        "as_dict": make.outputs.artifacts["by_name"],
        "one": make.outputs.artifacts["first"],
    }


EXPECTED_KINDS = ["str", "set", "PosixPath", "str", "str", "NoneType"]
EXPECTED_TEXT = "task.0000/POSCAR|task.0001/POSCAR|task.0002/POSCAR|ab"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_pydflow_ops_in_the_native_api(executor: str) -> None:
    make = da.Step("make", MakeFiles, parameters={"n": 3, "msg": "ab"})
    inspect = da.Step(
        "inspect",
        Inspect,
        parameters={"big": Payload("hi")},
        artifacts={**inspect_artifacts(make), "missing": None},
    )
    result = da.Workflow("native", executor=executor).add(make).add(inspect).run()
    assert result.status == "Succeeded", [r.error for r in result.records]
    (rec,) = result.query_step("inspect")
    assert rec.outputs.parameters["kinds"] == EXPECTED_KINDS
    # natively, list items fetched from the artifact store are named <i>/<file name>; the
    # compatibility Step restores Dflow's relative names (task.0000/POSCAR)
    assert rec.outputs.parameters["text"] in (EXPECTED_TEXT, "0/POSCAR|1/POSCAR|2/POSCAR|ab")
    big = rec.outputs.parameters["big"]  # natively a BigParameter may come back by reference
    assert getattr(big, "value", big).msg == "hihi"
    (made,) = result.query_step("make")
    assert made.outputs.parameters["names"] == [f"task.{i:04d}/POSCAR" for i in range(3)]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_pydflow_ops_in_the_compat_api(executor: str) -> None:
    make = Step(
        "make", PythonOPTemplate(MakeFiles, image="python:3.8"), parameters={"n": 3, "msg": "ab"}
    )
    inspect = Step(
        "inspect",
        PythonOPTemplate(Inspect, image="python:3.8"),
        parameters={"big": Payload("hi")},
        artifacts=inspect_artifacts(make),
    )
    wf = Workflow("compat", executor=executor)
    wf.add(make)
    wf.add(inspect)
    wf.submit()
    wf.wait()
    assert wf.query_status() == "Succeeded"
    (step,) = wf.query_step(name="inspect")
    assert step.outputs.parameters["kinds"].value == EXPECTED_KINDS
    assert step.outputs.parameters["text"].value == EXPECTED_TEXT
    assert isinstance(step.outputs.parameters["big"].value, Payload)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_pydflow_transient_and_fatal_errors(executor: str, tmp_path: Path) -> None:
    flaky = Step(
        "flaky",
        PythonOPTemplate(Flaky, retry_on_transient_error=3),
        parameters={"marker": str(tmp_path / "m1"), "tries": 2},
    )
    fatal = Step(
        "fatal",
        PythonOPTemplate(Flaky, retry_on_transient_error=3),
        parameters={"marker": str(tmp_path / "m2"), "tries": 0, "fatal": True},
        continue_on_failed=True,
    )
    wf = Workflow("errors", executor=executor)
    wf.add([flaky, fatal])
    wf.submit()
    wf.wait()
    assert wf.query_status() == "Succeeded"
    (ok,) = wf.query_step(name="flaky")
    assert ok.outputs.parameters["calls"].value == 3 and ok.attempts == 3
    (bad,) = wf.query_step(name="fatal")
    assert bad.phase == "Failed" and bad.attempts == 1 and "FatalError" in bad.message
    # natively: pydflow's TransientError is the native one for the retry policy
    native = da.Step(
        "flaky",
        Flaky,
        parameters={"marker": str(tmp_path / "m3"), "tries": 1},
        retries=da.RetryPolicy(max_retries=2, backoff=0, jitter=0, retry_on={"transient"}),
    )
    result = da.Workflow("native-errors", executor=executor).add(native).run()
    assert result.status == "Succeeded" and result.records[0].attempts == 2


def test_pydflow_function_op_both_apis() -> None:
    result = da.Workflow("fn").add(da.Step("add", add, parameters={"a": 1})).run()
    assert result.records[0].outputs.parameters == {"sum": 11}
    wf = Workflow("fn")
    wf.add(Step("add", PythonOPTemplate(add), parameters={"a": 1, "b": 2}))
    wf.submit()
    wf.wait()
    assert wf.query_step(name="add")[0].outputs.parameters["sum"].value == 3


def test_pydflow_op_timeout_on_the_process_executor() -> None:
    wf = Workflow("nap", executor="process")
    wf.add(Step("nap", PythonOPTemplate(Sleep, timeout=1), parameters={"seconds": 30}))
    wf.submit()
    wf.wait()
    assert wf.query_status() == "Failed"


def test_pydflow_op_with_uploaded_inputs() -> None:
    for i in range(2):
        Path(f"task.{i:04d}").mkdir()
        Path(f"task.{i:04d}/POSCAR").write_text(f"p{i}")
    files = upload_artifact([f"task.{i:04d}/POSCAR" for i in range(2)])
    step = Step(
        "inspect",
        PythonOPTemplate(Inspect),
        parameters={"big": Payload("x")},
        artifacts={
            "as_strs": files,
            "as_set": files,
            "as_dir": files,
            "as_dict": {"a": files.local_path[0]},
            "one": files.local_path[1],
        },
    )
    wf = Workflow("uploaded")
    wf.add(step)
    wf.submit()
    wf.wait()
    assert wf.query_status() == "Succeeded"
    text = wf.query_step(name="inspect")[0].outputs.parameters["text"].value
    assert text == "task.0000/POSCAR|task.0001/POSCAR|p1"
