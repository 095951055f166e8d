"""dflow_async.dflow.python's OP model keeps Dflow's behaviour; its OPs also run natively."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple  # noqa: UP035 (Dflow's tuple outputs)

import pytest
from compat_ops import Files, Square

import dflow_async as da
from dflow_async.dflow.python import (
    OP,
    OPIO,
    Artifact,
    BigParameter,
    FatalError,
    OPIOSign,
    Parameter,
    TransientError,
)


def test_signs_keep_dflow_constructors() -> None:
    p = Parameter(int, default=3, global_name="g")
    assert p.default == 3 and p.global_name == "g"
    assert not hasattr(Parameter(int), "default")
    b = BigParameter(dict)
    assert b.type is dict and not hasattr(b, "default")
    a = Artifact(Path, archive=None, optional=True, global_name="x")
    assert a.optional and a.archive is None and a.sub_path
    with pytest.raises(TypeError, match="not an allowed artifact type"):
        Artifact(int)
    with pytest.raises(TypeError, match="abstract"):
        OP()  # type: ignore[abstract]


def test_exec_sign_check_on_direct_calls() -> None:
    op = Square()
    assert op.execute(OPIO({"x": 2}))["y"] == 4 if Path("sq").exists() is False else True
    with pytest.raises(RuntimeError, match="key x declared in the input sign"):
        Square().execute(OPIO({}))
    with pytest.raises(RuntimeError, match="key z in the input"):
        Square().execute(OPIO({"x": 1, "z": 2}))
    with pytest.raises(TypeError, match="type of x must be int"):
        Square().execute(OPIO({"x": "1"}))


MANY = {"double": int, "text": str}


def test_function_op_follows_dflow_output_names() -> None:
    @OP.function
    def one(a: int, b: int = 2) -> int:
        return a * b

    @OP.function
    def many(a: int) -> MANY:  # Dflow's dict annotation (a module global here)
        return {"double": 2 * a, "text": str(a)}

    @OP.function
    def pair(a: int) -> Tuple[int, int]:  # noqa: UP006
        return a, a + 1

    assert list(one.get_output_sign()) == ["dflow_output"]
    assert one.get_input_sign()["b"].default == 2
    assert one(3) == OPIO({"dflow_output": 6})
    assert many(a=2) == OPIO({"double": 4, "text": "2"})
    assert pair(1) == OPIO({"dflow_output_0": 1, "dflow_output_1": 2})
    result = da.Workflow("fn").add(da.Step("one", one, parameters={"a": 5})).run()
    assert result.records[0].outputs.parameters == {"dflow_output": 10}


def test_errors_are_the_native_ones() -> None:
    assert TransientError is da.TransientError and FatalError is da.FatalError


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_compat_ops_in_the_native_api(executor: str) -> None:
    files = da.Step("files", Files, parameters={"n": 2})
    sq = da.Step("sq", Square, parameters={"x": 3})
    result = da.Workflow("native", executor=executor).add([files, sq]).run()
    assert result.status == "Succeeded", [r.error for r in result.records]
    (rec,) = result.query_step("files")
    assert [p.read_text() for p in rec.artifact_paths("files")] == ["data 0", "data 1"]
    assert result.query_step("sq")[0].outputs.parameters["y"] == 9


class Outside(OP):
    """Returns a file outside its work directory, which Dflow accepts."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"path": str})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"out": Artifact(Path)})

    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"out": Path(op_in["path"])})


def test_outputs_outside_the_work_directory_are_brought_in(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "result.txt"
    outside.parent.mkdir()
    outside.write_text("kept")
    result = da.Workflow("out").add(da.Step("o", Outside, parameters={"path": str(outside)})).run()
    assert result.status == "Succeeded", result.records[0].errors
    (path,) = result.records[0].artifact_paths("out")
    assert path.read_text() == "kept" and str(path).startswith(str(result.run_dir))


def test_op_attributes_dflow_sets() -> None:
    seen: dict[str, Any] = {}

    class Spy(OP):
        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign()

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign()

        def execute(self, op_in: OPIO) -> OPIO:
            seen.update(key=self.key, workflow=self.workflow_name)
            return OPIO()

    from dflow_async.dflow import Step, Workflow
    from dflow_async.dflow.python import PythonOPTemplate

    wf = Workflow("spy")
    wf.add(Step("spy", PythonOPTemplate(Spy), key="my-key"))
    wf.submit()
    wf.wait()
    assert seen == {"key": "my-key", "workflow": wf.id}


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_none_passes_any_sign_as_in_dflow(executor: str) -> None:
    # dpgen2's first scheduler step: exploration_report=None for a BigParameter(...), trajs=None
    # for an artifact; Dflow's sign check skips None values, on inputs and outputs
    from compat_ops import Nones

    from dflow_async.dflow import Step, Workflow
    from dflow_async.dflow.python import PythonOPTemplate

    first = Step(
        "first",
        PythonOPTemplate(Nones),
        parameters={"n": None, "report": None},
        artifacts={"trajs": None},
    )
    second = Step(
        "second",
        PythonOPTemplate(Nones),
        parameters={"n": first.outputs.parameters["n"], "report": {"a": 1}},
        artifacts={"trajs": None},
    )
    wf = Workflow("nones", executor=executor)
    wf.add(first)
    wf.add(second)
    wf.submit()
    wf.wait()
    assert wf.query_status() == "Succeeded"
    (step,) = wf.query_step(name="second")
    assert step.outputs.parameters["given"].value == "(None, {'a': 1}, None)"
    assert step.outputs.parameters["n"].value is None


def test_files_or_hdf5_datasets_artifacts_take_files() -> None:
    # dpgen2 imports HDF5Datasets and declares Artifact(Union[List[Path], HDF5Datasets])
    from compat_ops import Trajs

    from dflow_async.dflow import Step, Workflow
    from dflow_async.dflow.python import PythonOPTemplate

    files = Step("files", PythonOPTemplate(Files), parameters={"n": 2})
    trajs = Step(
        "trajs", PythonOPTemplate(Trajs), artifacts={"trajs": files.outputs.artifacts["files"]}
    )
    wf = Workflow("trajs")
    wf.add(files)
    wf.add(trajs)
    wf.submit()
    wf.wait()
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="trajs")[0].outputs.parameters["texts"].value == ["data 0", "data 1"]
