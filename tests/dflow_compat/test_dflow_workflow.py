"""The compatibility API: Workflow, Steps/DAG/Task, inputs and outputs, expressions, queries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from compat_ops import Echo, FailIf, Plus1, Square, Sum

from dflow_async import WorkflowValidationError
from dflow_async.dflow import (
    DAG,
    InputParameter,
    Inputs,
    OutputArtifact,
    OutputParameter,
    Outputs,
    Step,
    Steps,
    Task,
    Workflow,
    argo_len,
    argo_range,
    argo_sequence,
    if_expression,
)
from dflow_async.dflow.python import PythonOPTemplate, Slices


def run(wf: Workflow, **kwargs: object) -> Workflow:
    wf.submit(**kwargs)  # type: ignore[arg-type]
    wf.wait()
    return wf


def test_submit_returns_at_once_and_status_follows_the_run() -> None:
    wf = Workflow("status")
    wf.add(Step("slow", PythonOPTemplate(Echo), parameters={"value": 1}))
    wf.add(Step("nap", PythonOPTemplate(FailIf), parameters={"x": 1}))
    with pytest.raises(RuntimeError, match="not been submitted"):
        wf.query_status()
    info = wf.submit()
    assert info.id == wf.id and wf.id.startswith("status-")
    assert wf.query_status() in ("Pending", "Running", "Succeeded")
    wf.wait()
    assert wf.query_status() == "Succeeded"
    assert [s.displayName for s in wf.query_step()] == ["slow", "nap"]


def test_recursion_with_string_key_and_when() -> None:
    steps = Steps(
        name="iter",
        inputs=Inputs(
            parameters={"iter": InputParameter(value=0), "limit": InputParameter(value=4)}
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
    wf = run(Workflow("recurse", steps=steps))
    assert wf.query_status() == "Succeeded"
    assert wf.query_keys_of_steps() == ["iter-0", "iter-1", "iter-2", "iter-3"]
    (last,) = wf.query_step(key="iter-3")
    assert last.phase == "Succeeded" and last.key == "iter-3" and last.type == "Pod"
    assert last.outputs.parameters["iter"].value == 4
    assert last["phase"] == "Succeeded"  # Dflow's ArgoStep is a dict too
    assert wf.query_step(name="next", phase="Skipped")[0].type == "Steps"
    assert wf.query_step_by_key("iter-1")[0].outputs.parameters["iter"].value == 2


def test_ports_assigned_after_construction_and_outputs_set_later() -> None:
    steps = Steps(name="inner")
    steps.inputs.parameters["x"] = InputParameter()
    steps.inputs.parameters["y"] = 5  # a plain value is a default
    steps.outputs.parameters["x"] = OutputParameter()
    steps.outputs.parameters["y"] = OutputParameter(default=-1)
    steps.outputs.artifacts["out"] = OutputArtifact()
    sq = Step("sq", PythonOPTemplate(Square), parameters={"x": steps.inputs.parameters["x"]})
    steps.add(sq)
    steps.outputs.parameters["x"].value_from_parameter = sq.outputs.parameters["y"]
    steps.outputs.artifacts["out"]._from = sq.outputs.artifacts["out"]
    wf = Workflow("later")
    wf.add(Step("outer", steps, parameters={"x": 3}))
    run(wf)
    (outer,) = wf.query_step(name="outer")
    assert outer.outputs.parameters["x"].value == 9
    assert outer.outputs.parameters["y"].value == -1
    assert outer.outputs.artifacts["out"].local_path.read_text() == "9"


@pytest.mark.parametrize("head", [True, False])
def test_if_expression_outputs(head: bool) -> None:
    steps = Steps(
        "cond",
        outputs=Outputs(parameters={"msg": OutputParameter()}, artifacts={"res": OutputArtifact()}),
    )
    flag = Step("flag", PythonOPTemplate(Echo), parameters={"value": head})
    sq2 = Step("sq2", PythonOPTemplate(Square), parameters={"x": 2})
    sq3 = Step("sq3", PythonOPTemplate(Square), parameters={"x": 3})
    steps.add([flag, sq2, sq3])
    steps.outputs.parameters["msg"].value_from_expression = if_expression(
        _if=flag.outputs.parameters["value"],
        _then=sq2.outputs.parameters["y"],
        _else=sq3.outputs.parameters["y"],
    )
    steps.outputs.artifacts["res"].from_expression = if_expression(
        _if="%s == 4" % sq2.outputs.parameters["y"],  # a string condition, evaluated safely
        _then=sq2.outputs.artifacts["out"],
        _else=sq3.outputs.artifacts["out"],
    )
    wf = Workflow("conditional")
    wf.add(Step("conditional", steps))
    run(wf)
    (step,) = wf.query_step(name="conditional")
    assert step.outputs.parameters["msg"].value == (4 if head else 9)
    assert step.outputs.artifacts["res"].local_path.read_text() == "4"


def test_string_condition_in_a_parameter_adds_the_dependency_in_a_dag() -> None:
    dag = DAG("d")
    a = Task("a", PythonOPTemplate(Square), parameters={"x": 3})
    b = Task(
        "b",
        PythonOPTemplate(Echo),
        parameters={"value": if_expression("%s > 5" % a.outputs.parameters["y"], "big", "small")},
    )
    dag.add([b, a])  # b first: only the string names a
    wf = run(Workflow("dag-cond", dag=dag))
    assert wf.query_step(name="b")[0].outputs.parameters["value"].value == "big"


def test_dag_tasks_dependencies_and_default_entrypoint() -> None:
    a = Task("a", PythonOPTemplate(Echo), parameters={"value": 1})
    b = Task("b", PythonOPTemplate(Echo), parameters={"value": 2}, dependencies=["a"])
    c = Task("c", PythonOPTemplate(Echo), parameters={"value": 3}, dependencies=[b])
    wf = Workflow("dag")
    wf.add([c, b, a])
    assert isinstance(wf.entrypoint, DAG)
    run(wf)
    steps = wf.query_step()
    assert [s.displayName for s in steps] == ["a", "b", "c"]
    assert steps[0].finishedAt is not None and steps[0].get_duration().total_seconds() >= 0


def test_argo_helpers_on_references() -> None:
    prep = Step("prep", PythonOPTemplate(Echo), parameters={"value": [4, 5, 6]})
    fan = Step(
        "fan",
        PythonOPTemplate(
            Square,
            slices=Slices("{{item}}", input_parameter=["x"], output_parameter=["y"]),
        ),
        parameters={"x": prep.outputs.parameters["value"]},
        with_param=argo_range(argo_len(prep.outputs.parameters["value"])),
    )
    seq = Step(
        "seq",
        PythonOPTemplate(Echo),
        parameters={"value": "{{item}}"},
        with_sequence=argo_sequence(
            count=argo_len(prep.outputs.parameters["value"]), start=2, format="n%02d"
        ),
    )
    total = Step("total", PythonOPTemplate(Sum), parameters={"ys": fan.outputs.parameters["y"]})
    wf = Workflow("argo")
    wf.add(prep)
    wf.add([fan, seq])
    wf.add(total)
    run(wf)
    assert wf.query_step(name="fan")[0].outputs.parameters["y"].value == [16, 25, 36]
    assert wf.query_step(name="seq")[0].outputs.parameters["value"].value == ["n02", "n03", "n04"]
    assert wf.query_step(name="total")[0].outputs.parameters["total"].value == 77


def test_static_string_parameters_are_decoded_like_dflow() -> None:
    wf = run_single(Step("sq", PythonOPTemplate(Square), parameters={"x": "7"}))
    assert wf.query_step(name="sq")[0].outputs.parameters["y"].value == 49


def run_single(step: Step, **kwargs: object) -> Workflow:
    wf = Workflow("single", **kwargs)  # type: ignore[arg-type]
    wf.add(step)
    return run(wf)


def test_envs_are_set_while_the_op_runs() -> None:
    tpl = PythonOPTemplate(
        Echo, image="python:3.11", envs={"DFLOW_COMPAT_X": "hello"}, requests={"cpu": "1"}
    )
    step = Step("echo", tpl, parameters={"name": "DFLOW_COMPAT_X"})
    assert step.resources["image"] == "python:3.11" and step.resources["requests"] == {"cpu": "1"}
    wf = run_single(step)
    assert wf.query_step(name="echo")[0].outputs.parameters["env"].value == "hello"


def test_retry_on_transient_error_and_failure_reporting(tmp_path: object) -> None:
    ok = Step(
        "flaky",
        PythonOPTemplate(FailIf, retry_on_transient_error=2),
        # outside the work dir: every attempt starts in a fresh one, as a retried pod does
        parameters={"x": 1, "marker": str(Path(str(tmp_path)) / "m1"), "tries": 2},
    )
    wf = run_single(ok)
    (step,) = wf.query_step(name="flaky")
    assert step.phase == "Succeeded" and step.attempts == 3
    bad = Step(
        "bad",
        PythonOPTemplate(FailIf, retry_on_transient_error=1),
        parameters={"x": 1, "bad": [1]},
    )
    wf = run_single(bad)
    assert wf.query_status() == "Failed"
    (step,) = wf.query_step(name="bad")
    # Dflow's pod exits 1 on any exception: retry_on_transient_error retries it too
    assert step.phase == "Failed" and step.attempts == 2 and "bad x 1" in step.message


def test_timeout_fails_the_step() -> None:
    step = Step("nap", PythonOPTemplate(Napper, timeout=1), parameters={"seconds": 30})
    t0 = time.perf_counter()
    wf = run_single(step, executor="process")
    assert wf.query_status() == "Failed" and time.perf_counter() - t0 < 20
    assert "timed out" in wf.query_step(name="nap")[0].message


def test_continue_on_failed_and_success_ratio() -> None:
    fan = Step(
        "fan",
        PythonOPTemplate(FailIf, slices=Slices(input_parameter=["x"], output_parameter=["x"])),
        parameters={"x": [0, 1, 2, 3], "bad": [2]},
        continue_on_success_ratio=0.7,
    )
    after = Step("after", PythonOPTemplate(Echo), parameters={"value": 1})
    wf = Workflow("ratio")
    wf.add(fan)
    wf.add(after)
    run(wf)
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="after")[0].phase == "Succeeded"
    one = Step(
        "one", PythonOPTemplate(FailIf), parameters={"x": 1, "bad": [1]}, continue_on_failed=True
    )
    wf = Workflow("tolerant")
    wf.add(one)
    wf.add(Step("next", PythonOPTemplate(Echo), parameters={"value": 2}))
    run(wf)
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="one")[0].phase == "Failed"


def test_validation_problems_are_raised_by_submit() -> None:
    wf = Workflow("invalid")
    wf.add(Step("sq", PythonOPTemplate(Square), parameters={"nope": 1}))
    with pytest.raises(WorkflowValidationError, match="nope"):
        wf.submit()


def test_names_and_ids_that_cannot_name_a_run_directory_are_refused(dflow_home: Path) -> None:
    """Dflow names (Kubernetes names: lowercase letters, digits, '-' and '.') are run ids;
    one that is not a single path component would put the run outside the store."""
    with pytest.raises(ValueError, match="workflow name 'team/screen' cannot start a run id"):
        Workflow("team/screen")
    wf = Workflow("steps-v1.2", id="../escaped")
    wf.add(Step("sq", PythonOPTemplate(Square), parameters={"x": 2}))
    with pytest.raises(ValueError, match=r"id='../escaped' is not a run id"):
        wf.submit()  # at once, not in the run's thread
    assert not (dflow_home / ".dflow-async" / "escaped").exists()
    ok = run_single(Step("sq", PythonOPTemplate(Square), parameters={"x": 2}))
    assert ok.query_status() == "Succeeded"


def test_terminate_stops_the_run() -> None:
    wf = Workflow("stop", executor="process")
    wf.add(Step("nap", PythonOPTemplate(Napper), parameters={"seconds": 30}))
    wf.submit()
    deadline = time.time() + 20
    while not wf.query_step(phase="Running") and time.time() < deadline:
        time.sleep(0.05)
    wf.terminate()
    wf.wait()
    assert wf.query_status() == "Failed"


def test_a_run_is_found_by_id_from_its_journal() -> None:
    wf = run_single(Step("sq", PythonOPTemplate(Square), parameters={"x": 5}, key="five"))
    again = Workflow(id=wf.id)
    from dflow_async.dflow import _run

    _run.RUNS.pop(wf.id)  # as if another process asked
    assert again.query_status() == "Succeeded"
    (step,) = again.query_step(key="five")
    assert step.outputs.parameters["y"].value == 25


from compat_ops import OP, OPIO, OPIOSign  # noqa: E402


class Napper(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"seconds": float})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign()

    def execute(self, op_in: OPIO) -> OPIO:
        time.sleep(op_in["seconds"])
        return OPIO()


def test_config_is_accepted_and_queries_by_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    from dflow_async.dflow import config, s3_config, set_config, set_s3_config

    for key in ("host", "namespace", "mode"):
        monkeypatch.setitem(config, key, config[key])  # restored afterwards
    monkeypatch.setitem(s3_config, "endpoint", s3_config["endpoint"])
    set_config(host="https://argo.example:2746", namespace="team", mode="debug")
    set_s3_config(endpoint="minio:9000")
    assert config["namespace"] == "team" and s3_config["endpoint"] == "minio:9000"
    inner = Steps("inner")
    inner.add(Step("sq", PythonOPTemplate(Square), parameters={"x": 2}))
    wf = Workflow("parents", host="ignored", namespace="ignored", labels={"a": "b"})
    wf.add(Step("block", inner))
    wf.add(Step("after", PythonOPTemplate(Echo), parameters={"value": 1}))
    run(wf)
    assert [s.name for s in wf.query_step(parent_id="block")] == ["block/sq"]
    deep_last = wf.query_step(sort_by_generation=True)[-1]
    assert deep_last.name == "block/sq"
    info = wf.query()
    assert info.phase == "Succeeded" and info.get_step(name="sq")[0].name == "block/sq"
    assert wf.query_step(type="Steps")[0].name == "block"


def test_a_step_template_shows_the_ports_of_its_op() -> None:
    # dpgen2's loop: scheduler_step.template.outputs.parameters["x"].global_name = "x"
    sq = Step("sq", PythonOPTemplate(Square), parameters={"x": 3}, key="sq")
    tpl = sq.template
    assert list(tpl.inputs.parameters) == ["x"]  # not the hidden key port
    assert tpl.inputs.parameters["x"].type is int
    assert set(tpl.outputs.parameters) == {"y", "key"}
    assert tpl.outputs.parameters["key"].default == ""
    assert list(tpl.outputs.artifacts) == ["out"]
    tpl.outputs.parameters["y"].global_name = "y"  # kept; no global outputs without Argo
    wf = Workflow("ports")
    wf.add(sq)
    run(wf)
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(key="sq")[0].outputs.parameters["y"].value == 9
