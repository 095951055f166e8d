"""Dflow's Slices on PythonOPTemplate: {{item}}, group_size, pool_size, sub_path, create_dir,
per-slice keys, Step(slices=) overrides and Step(parallelism=)."""

from __future__ import annotations

import pytest
from compat_ops import Cat, Echo, Files, Label, Square, Sum, Where

from dflow_async.dflow import Step, Workflow, argo_enumerate, argo_range, upload_artifact
from dflow_async.dflow.python import PythonOPTemplate, Slices


def run(*groups: object, executor: str = "inline", name: str = "slices") -> Workflow:
    wf = Workflow(name, executor=executor)
    for g in groups:
        wf.add(g)
    wf.submit()
    wf.wait()
    return wf


def square_slices(**kwargs: object) -> PythonOPTemplate:
    return PythonOPTemplate(
        Square,
        slices=Slices(
            "{{item}}",
            input_parameter=["x"],
            output_parameter=["y"],
            output_artifact=["out"],
            **kwargs,  # type: ignore[arg-type]
        ),
    )


@pytest.mark.parametrize("executor", ["inline", "process"])
@pytest.mark.parametrize("group_size", [None, 3])
def test_item_slices_group_size_and_reduce(executor: str, group_size: int | None) -> None:
    fan = Step(
        "fan",
        square_slices(group_size=group_size, pool_size=1, create_dir=True),
        parameters={"x": [1, 2, 3, 4, 5, 6, 7]},
        with_param=argo_range(7),
        key="sq-{{item}}",
    )
    total = Step(
        "total",
        PythonOPTemplate(Sum),
        parameters={"ys": fan.outputs.parameters["y"]},
        artifacts={"files": fan.outputs.artifacts["out"]},
    )
    wf = run(fan, total, executor=executor)
    assert wf.query_status() == "Succeeded"
    (t,) = wf.query_step(name="total")
    assert t.outputs.parameters["total"].value == t.outputs.parameters["from_files"].value == 140
    keys = [s.key for s in wf.query_step(name="fan") if s.key]
    assert keys == [f"sq-{i}" for i in range(7)]
    (third,) = wf.query_step(key="sq-2")
    assert third.outputs.parameters["y"].value == 9
    assert third.outputs.parameters["key"].value == "sq-2"  # op.key, as Dflow sets it


def test_slices_without_with_param_follow_the_list() -> None:
    fan = Step(
        "fan",
        PythonOPTemplate(Square, slices=Slices(input_parameter=["x"], output_parameter=["y"])),
        parameters={"x": [3, 4]},
    )
    wf = run(fan)
    assert wf.query_step(name="fan")[0].outputs.parameters["y"].value == [9, 16]


def test_step_slices_override_and_parallelism() -> None:
    tpl = PythonOPTemplate(Square)
    fan = Step(
        "fan",
        tpl,
        parameters={"x": [5, 6, 7]},
        slices=Slices(input_parameter=["x"], output_parameter=["y"]),
        parallelism=1,
    )
    assert fan.slices is not None and fan.slices.pool_size == 1
    wf = run(fan)
    assert wf.query_step(name="fan")[0].outputs.parameters["y"].value == [25, 36, 49]


def test_sub_path_slices_of_a_list_artifact() -> None:
    files = Step("files", PythonOPTemplate(Files), parameters={"n": 3})
    cat = Step(
        "cat",
        PythonOPTemplate(
            Cat, slices=Slices(sub_path=True, input_artifact=["file"], output_parameter=["text"])
        ),
        artifacts={"file": files.outputs.artifacts["files"]},
    )
    wf = run(files, cat)
    (step,) = wf.query_step(name="cat")
    assert step.outputs.parameters["text"].value == ["data 0", "data 1", "data 2"]


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_item_slices_of_a_list_output_keep_each_relative_name(executor: str) -> None:
    # slice i is fetched from the store as .../<port>/data.txt: Dflow hands task.<i>/data.txt
    files = Step("files", PythonOPTemplate(Files), parameters={"n": 3})
    where = Step(
        "where",
        PythonOPTemplate(
            Where, slices=Slices("{{item}}", input_artifact=["file"], output_parameter=["where"])
        ),
        artifacts={"file": files.outputs.artifacts["files"]},
        with_param=argo_range(3),
    )
    wf = run(files, where, executor=executor)
    (step,) = wf.query_step(name="where")
    assert step.outputs.parameters["where"].value == [f"task.{i}/data.txt" for i in range(3)]


def test_sub_path_slices_of_uploaded_files(dflow_home: object) -> None:
    from pathlib import Path

    for i in range(2):
        Path(f"in{i}").mkdir()
        Path(f"in{i}/data.txt").write_text(f"up {i}")
    art = upload_artifact([f"in{i}/data.txt" for i in range(2)])
    cat = Step(
        "cat",
        PythonOPTemplate(
            Cat, slices=Slices(sub_path=True, input_artifact=["file"], output_parameter=["text"])
        ),
        artifacts={"file": art},
    )
    wf = run(cat)
    assert wf.query_step(name="cat")[0].outputs.parameters["text"].value == ["up 0", "up 1"]


def test_argo_enumerate_items() -> None:
    fan = Step(
        "fan",
        PythonOPTemplate(Echo),
        parameters={"value": "{{item.value}}-{{item.order}}"},
        with_param=argo_enumerate(["a", "b"]),
    )
    wf = run(fan)
    assert wf.query_step(name="fan")[0].outputs.parameters["value"].value == ["a-0", "b-1"]


def test_slices_of_a_steps_template() -> None:
    from dflow_async.dflow import InputParameter, OutputParameter, Steps

    inner = Steps("inner")
    inner.inputs.parameters["x"] = InputParameter()
    sq = Step("sq", PythonOPTemplate(Square), parameters={"x": inner.inputs.parameters["x"]})
    inner.add(sq)
    inner.outputs.parameters["y"] = OutputParameter(value_from_parameter=sq.outputs.parameters["y"])
    fan = Step(
        "fan",
        inner,
        parameters={"x": [2, 3]},
        slices=Slices("{{item}}", input_parameter=["x"], output_parameter=["y"]),
        with_param=argo_range(2),
    )
    wf = run(fan)
    assert wf.query_step(name="fan")[0].outputs.parameters["y"].value == [4, 9]


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_int_wrapped_item_over_a_formatted_sequence(executor: str) -> None:
    # dpgen2's run-train/run-lmp/run-fp: items "0000", "0001"... from argo_sequence(format=),
    # indexed with the Python expression "int('{{item}}')"
    from dflow_async.dflow import argo_len, argo_sequence

    xs = [2, 3, 4]
    fan = Step(
        "fan",
        PythonOPTemplate(
            Square, slices=Slices("int('{{item}}')", input_parameter=["x"], output_parameter=["y"])
        ),
        parameters={"x": xs},
        with_sequence=argo_sequence(argo_len(xs), format="%04d"),
        key="sq-{{item}}",
    )
    wf = run(fan, executor=executor)
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="fan")[0].outputs.parameters["y"].value == [4, 9, 16]
    assert wf.query_step(key="sq-0002")[0].outputs.parameters["y"].value == 16


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_item_placeholder_given_to_a_str_port_is_text(executor: str) -> None:
    # Argo substitutes "{{item}}" as text: a str port gets "0", an int port 0 (from the sign)
    labels = Step(
        "labels",
        PythonOPTemplate(Label),
        parameters={"name": "{{item}}"},
        with_param=argo_range(2),
    )
    squares = Step(
        "squares", PythonOPTemplate(Square), parameters={"x": "{{item}}"}, with_param=argo_range(2)
    )
    wf = run([labels, squares], executor=executor)  # type: ignore[arg-type]
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="labels")[0].outputs.parameters["label"].value == [
        "label-0",
        "label-1",
    ]
    assert wf.query_step(name="squares")[0].outputs.parameters["y"].value == [0, 1]


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_slices_over_an_optional_artifact_left_out_give_every_slice_none(
    executor: str, dflow_home: object
) -> None:
    # dpgen2's first iteration: run-train slices init_model over the block's optional
    # init_models, which nobody gives; Dflow hands every slice None (it failed the step with
    # "sliced input 'dflow_origin_init_model' must be a list, got NoneType")
    from compat_ops import Train

    from dflow_async.dflow import InputArtifact, InputParameter, Inputs, Steps

    def block(models: object) -> Workflow:
        steps = Steps(
            "block",
            inputs=Inputs(
                parameters={"n": InputParameter(value=2)},
                artifacts={"init_models": InputArtifact(optional=True)},
            ),
        )
        sliced = Slices(
            "{{item}}", input_parameter=["i"], input_artifact=["init_model"], output_parameter=["o"]
        )
        steps.add(
            Step(
                "train",
                PythonOPTemplate(Train, slices=sliced),
                parameters={"i": [0, 1]},
                artifacts={"init_model": steps.inputs.artifacts["init_models"]},
                with_param=argo_range(2),
            )
        )
        wf = Workflow("opt", steps=steps, executor=executor)
        if models is not None:
            wf = Workflow("opt-given", executor=executor)
            wf.add(Step("block", steps, artifacts={"init_models": models}))
        wf.submit()
        wf.wait()
        return wf

    wf = block(None)
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="train")[0].outputs.parameters["o"].value == ["0:None", "1:None"]
    from pathlib import Path

    for n in range(2):
        Path(f"m{n}.pb").write_text(f"model{n}")
    wf = block(upload_artifact(["m0.pb", "m1.pb"]))
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="train")[0].outputs.parameters["o"].value == ["0:model0", "1:model1"]
