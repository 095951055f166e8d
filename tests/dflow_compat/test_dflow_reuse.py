"""submit(reuse_step=[...]): step-level keys, per-slice keys ({{item}}), Steps-level keys, and
modify_output_parameter / modify_output_artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
from compat_ops import Plus1, Square, Sum

from dflow_async.dflow import (
    InputParameter,
    Inputs,
    OutputParameter,
    Step,
    Steps,
    Workflow,
    argo_range,
    upload_artifact,
)
from dflow_async.dflow.python import PythonOPTemplate, Slices


def recursion(limit: int = 5) -> Steps:
    steps = Steps(
        name="iter",
        inputs=Inputs(
            parameters={"iter": InputParameter(value=0), "limit": InputParameter(value=limit)}
        ),
    )
    plus1 = Step(
        "plus1",
        PythonOPTemplate(Plus1),
        parameters={"iter": steps.inputs.parameters["iter"]},
        key="iter-%s" % steps.inputs.parameters["iter"],
    )
    steps.add(plus1)
    steps.add(
        Step(
            "next",
            steps,
            parameters={"iter": plus1.outputs.parameters["iter"]},
            when="%s < %s" % (plus1.outputs.parameters["iter"], steps.inputs.parameters["limit"]),
        )
    )
    return steps


def run(wf: Workflow, reuse: list[object] | None = None) -> Workflow:
    wf.submit(reuse_step=reuse)  # type: ignore[arg-type]
    wf.wait()
    assert wf.query_status() == "Succeeded"
    return wf


def test_reuse_with_a_modified_output_skips_ahead() -> None:
    steps = recursion()
    first = run(Workflow("recurse", steps=steps))
    step0 = first.query_step(key="iter-0")[0]
    step1 = first.query_step(key="iter-1")[0]
    step1.modify_output_parameter("iter", 3)
    assert first.query_step(key="iter-1")[0].outputs.parameters["iter"].value == 2  # untouched
    second = run(Workflow("recurse-resubmit", steps=steps), [step0, step1])
    assert second.query_keys_of_steps() == ["iter-0", "iter-1", "iter-3", "iter-4"]
    assert second.query_step(key="iter-1")[0].outputs.parameters["iter"].value == 3


def sliced(name: str) -> Step:
    return Step(
        name,
        PythonOPTemplate(
            Square,
            slices=Slices(
                "{{item}}", input_parameter=["x"], output_parameter=["y"], output_artifact=["out"]
            ),
        ),
        parameters={"x": [1, 2, 3]},
        with_param=argo_range(3),
        key="sq-{{item}}",
    )


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_reuse_per_slice_keys_and_modified_artifacts(executor: str) -> None:
    first = Workflow("fan", executor=executor)
    first.add(sliced("fan"))
    run(first)
    one = first.query_step(key="sq-1")[0]
    one.modify_output_parameter("y", 100)
    Path("mine").mkdir()
    Path("mine/100.txt").write_text("100")
    one.modify_output_artifact("out", upload_artifact("mine/100.txt"))

    fan = sliced("fan")
    total = Step(
        "total",
        PythonOPTemplate(Sum),
        parameters={"ys": fan.outputs.parameters["y"]},
        artifacts={"files": fan.outputs.artifacts["out"]},
    )
    second = Workflow("fan-again", executor=executor)
    second.add(fan)
    second.add(total)
    run(second, [one])
    (t,) = second.query_step(name="total")
    assert t.outputs.parameters["total"].value == 1 + 100 + 9
    assert t.outputs.parameters["from_files"].value == 1 + 100 + 9
    assert second.query_step(key="sq-1")[0].outputs.parameters["y"].value == 100


def test_reuse_a_whole_steps_template_by_key() -> None:
    inner = Steps("inner")
    inner.inputs.parameters["x"] = InputParameter()
    sq = Step("sq", PythonOPTemplate(Square), parameters={"x": inner.inputs.parameters["x"]})
    inner.add(sq)
    inner.outputs.parameters["y"] = OutputParameter(value_from_parameter=sq.outputs.parameters["y"])
    first = Workflow("outer")
    first.add(Step("block", inner, parameters={"x": 4}, key="block"))
    run(first)
    block = first.query_step(key="block")[0]
    assert block.type == "Steps" and block.outputs.parameters["y"].value == 16
    block.modify_output_parameter("y", 1)
    second = Workflow("outer-again")
    second.add(Step("block", inner, parameters={"x": 4}, key="block"))
    run(second, [block])
    assert second.query_step(key="block")[0].outputs.parameters["y"].value == 1
    assert not second.query_step(name="block/sq")  # its inside did not run


def test_steps_without_a_key_or_not_succeeded_are_not_reused() -> None:
    first = Workflow("plain")
    first.add(Step("sq", PythonOPTemplate(Square), parameters={"x": 2}))
    run(first)
    (plain,) = first.query_step(name="sq")
    plain.modify_output_parameter("y", 0)
    second = Workflow("plain-again")
    second.add(Step("sq", PythonOPTemplate(Square), parameters={"x": 2}))
    run(second, [plain])
    assert second.query_step(name="sq")[0].outputs.parameters["y"].value == 4
