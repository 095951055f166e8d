"""Fan-outs at their edges: over nothing, per-slice keys of sub-workflows, template options."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from dflow_async import (
    Artifact,
    InputArtifact,
    Inputs,
    OutputParameter,
    Slices,
    Step,
    Steps,
    Workflow,
    WorkflowValidationError,
    item,
    op,
)


@pytest.fixture(autouse=True)
def _tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@op
def nothing() -> list[int]:
    return []


@op
def square(x: int) -> {"result": int, "out": Artifact(Path)}:  # type: ignore[valid-type]
    Path("out.txt").write_text(str(x * x))
    return {"result": x * x, "out": Path("out.txt")}


@op
def total(xs: list[int], files: Artifact(list[Path])) -> int:  # type: ignore[valid-type]
    assert len(files) == len(xs)
    return sum(xs)


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_a_fan_out_over_an_empty_list_succeeds_with_empty_outputs(executor: str) -> None:
    wf = Workflow("empty-fanout", executor=executor)
    gen = Step("gen", nothing)
    sq = Step(
        "sq",
        square,
        parameters={"x": gen.outputs.parameters["result"]},
        slices=Slices(input_parameter=["x"], output_parameter=["result"], output_artifact=["out"]),
    )
    tot = Step(
        "total",
        total,
        parameters={"xs": sq.outputs.parameters["result"]},
        artifacts={"files": sq.outputs.artifacts["out"]},
    )
    over_nothing = Step("wp", square, parameters={"x": item}, with_param=[])
    wf.add(gen)
    wf.add([sq, over_nothing])
    wf.add(tot)
    result = wf.run()
    assert result.status == "Succeeded", [(r.name, r.errors) for r in result.records]
    (rec,) = result.query_step(name="sq")
    assert rec.phase == "Succeeded"
    assert rec.outputs.parameters["result"] == []
    assert rec.outputs.artifacts["out"] == []
    assert result.query_step(name="wp")[0].outputs.parameters["result"] == []
    assert result.query_step(name="total")[0].outputs.parameters["result"] == 0


@op
def sq_or_fail(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x * x


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_per_slice_keys_of_a_sub_workflow_fan_out_get_each_slice_outcome(executor: str) -> None:
    sub = Steps("sub", inputs={"x": 0})
    a = Step("a", sq_or_fail, parameters={"x": sub.inputs.parameters["x"]})
    sub.add(a)
    sub.outputs.parameters["r"] = OutputParameter(
        value_from_parameter=a.outputs.parameters["result"]
    )
    wf = Workflow("sub-keys", executor=executor)
    wf.add(
        Step(
            "g",
            sub,
            parameters={"x": item},
            with_param=[1, 2, 3],
            key=f"g-{item}",
            continue_on_failed=True,
        )
    )
    result = wf.run()
    phases = {k: result.query_step(key=k)[0].phase for k in ("g-1", "g-2", "g-3")}
    assert phases == {"g-1": "Succeeded", "g-2": "Failed", "g-3": "Succeeded"}
    assert result.query_step(key="g-3")[0].outputs.parameters["r"] == 9
    assert result.query_step(key="g-2")[0].errors


@op
def span(t: float) -> {"s": float, "e": float}:  # type: ignore[valid-type]
    start = time.monotonic()
    time.sleep(t)
    return {"s": start, "e": time.monotonic()}


def _span_template() -> Steps:
    sub = Steps("spans", inputs={"t": 0.0})
    a = Step("a", span, parameters={"t": sub.inputs.parameters["t"]})
    sub.add(a)
    for name in ("s", "e"):
        sub.outputs.parameters[name] = OutputParameter(
            value_from_parameter=a.outputs.parameters[name]
        )
    return sub


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_pool_size_bounds_the_slices_of_a_sub_workflow_fan_out(executor: str) -> None:
    wf = Workflow("sub-pool", executor=executor)
    fan = Slices(input_parameter=["t"], output_parameter=["s", "e"], pool_size=2)
    wf.add(Step("fan", _span_template(), parameters={"t": [0.2] * 6}, slices=fan))
    result = wf.run()
    assert result.status == "Succeeded"
    out = result.query_step(name="fan")[0].outputs.parameters
    edges = sorted([(s, 1) for s in out["s"]] + [(e, -1) for e in out["e"]])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most == 2


def test_attempt_options_on_a_sub_workflow_step_are_refused() -> None:
    wf = Workflow("sub-options")
    wf.add(Step("t", _span_template(), parameters={"t": 0.0}, timeout=5))
    wf.add(Step("r", _span_template(), parameters={"t": 0.0}, retries=2))
    wf.add(Step("x", _span_template(), parameters={"t": 0.0}, executor="process"))
    with pytest.raises(WorkflowValidationError) as info:
        wf.validate()
    text = str(info.value)
    for step, option in (("t", "timeout"), ("r", "retries"), ("x", "executor")):
        assert f"step sub-options.{step}: {option}= applies to OP steps" in text


@op
def plus1(x: int) -> int:
    return x + 1


def test_format_specs_in_keys_apply_to_the_rendered_values() -> None:
    loop = Steps("loop", inputs={"i": 0})
    p = loop.inputs.parameters
    body = Step("body", plus1, parameters={"x": p["i"]}, key=f"iter-{p['i']:03d}")
    nxt = Step("next", loop, parameters={"i": body.outputs.parameters["result"]}, when=p["i"] < 2)
    loop.add(body)
    loop.add(nxt)
    result = Workflow("key-format", steps=loop).run()
    assert result.status == "Succeeded"
    assert [r.key for r in result.query_step(name="body")] == ["iter-000", "iter-001", "iter-002"]

    wf = Workflow("item-key-format")
    wf.add(Step("fan", plus1, parameters={"x": item}, with_param=[7, 8], key=f"f-{item:>3}"))
    (rec,) = wf.run().query_step(key="f-  8")
    assert rec.outputs.parameters["result"] == 9


@op
def nap(t: float) -> float:
    time.sleep(t)
    return t


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_timeout_counts_from_the_start_not_from_the_queue(executor: str) -> None:
    """One worker, four 0.4 s slices, timeout=1: the last waits 1.2 s for the worker, which
    must not count against its timeout."""
    from dflow_async.executors import InlineExecutor, ProcessExecutor

    pool = InlineExecutor(max_workers=1) if executor == "inline" else ProcessExecutor(1)
    wf = Workflow("queued-timeout", executor=pool)
    fan = Slices(input_parameter=["t"], output_parameter=["result"])
    wf.add(Step("naps", nap, parameters={"t": [0.4] * 4}, slices=fan, timeout=1))
    result = wf.run()
    (rec,) = result.query_step(name="naps")
    assert result.status == "Succeeded", rec.errors
    assert rec.outputs.parameters["result"] == [0.4] * 4


@op
async def async_nap(t: float) -> float:
    await asyncio.sleep(t)
    return t


@pytest.mark.parametrize(
    ("executor", "template", "says"),
    [
        ("inline", nap, "could not be stopped"),
        ("inline", async_nap, "was stopped"),
        ("process", nap, "was stopped"),
    ],
)
def test_a_timeout_says_whether_the_attempt_was_stopped(
    executor: str, template: Any, says: str
) -> None:
    """Python cannot interrupt a thread: a plain OP on the inline executor runs on after its
    timeout, and the message must say so (and where to run such steps) rather than claim
    it was stopped."""
    wf = Workflow("timeout-says", executor=executor)
    wf.add(Step("slow", template, parameters={"t": 1.0}, timeout=0.2))
    (rec,) = wf.run().query_step(name="slow")
    assert rec.phase == "Failed"
    assert "[timeout]" in rec.error and says in rec.error
    if says == "could not be stopped":
        assert "executor='process'" in rec.error


@op
def train(i: int, init_model: Artifact(Path, optional=True)) -> str:  # type: ignore[valid-type]
    return f"{i}:{init_model.read_text() if init_model else None}"


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_an_optional_sliced_input_left_out_gives_every_slice_none(
    tmp_path: Path, executor: str
) -> None:
    # dpgen2's run-train slices init_model over its block's optional input artifact, which the
    # first iteration leaves out: every slice gets None, as in Dflow (it failed the step with
    # "sliced input must be a list, got NoneType", and a literal None failed validation)
    def block(models: Any) -> Workflow:
        steps = Steps("block", inputs=Inputs(artifacts={"models": InputArtifact(optional=True)}))
        sl = Slices(
            input_parameter=["i"], input_artifact=["init_model"], output_parameter=["result"]
        )
        bound = {"init_model": steps.inputs.artifacts["models"]}
        steps.add(Step("train", train, parameters={"i": [0, 1, 2]}, artifacts=bound, slices=sl))
        literal = Slices(input_parameter=["i"], input_artifact=["init_model"])
        steps.add(
            Step(
                "literal",
                train,
                parameters={"i": [5]},
                artifacts={"init_model": None},
                slices=literal,
            )
        )
        wf = Workflow("opt", steps=Steps("main"))
        wf.entrypoint.add(
            Step("block", steps, artifacts={} if models is None else {"models": models})
        )
        return wf

    result = block(None).run(executor=executor).raise_for_status()
    assert result.query_step(name="train")[0].outputs.parameters["result"] == [
        "0:None",
        "1:None",
        "2:None",
    ]
    assert result.query_step(name="literal")[0].outputs.parameters["result"] == ["5:None"]
    # given, each slice takes its element as before
    models = []
    for n in range(3):
        models.append(tmp_path / f"m{n}.pb")
        models[-1].write_text(f"model{n}")
    result = block(models).run(executor=executor).raise_for_status()
    assert result.query_step(name="train")[0].outputs.parameters["result"] == [
        "0:model0",
        "1:model1",
        "2:model2",
    ]


def test_a_required_sliced_input_bound_to_none_is_still_refused() -> None:
    wf = Workflow("req")
    sl = Slices(input_parameter=["x"], output_parameter=["result"])
    wf.add(Step("sq", square, parameters={"x": None}, slices=sl))
    with pytest.raises(WorkflowValidationError, match="sliced input 'x' must be bound to a list"):
        wf.validate()
