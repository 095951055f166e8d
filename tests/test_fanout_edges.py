"""Fan-outs at their edges: over nothing, per-slice keys of sub-workflows, template options."""

from __future__ import annotations

from pathlib import Path

import pytest

from dflow_async import Artifact, Slices, Step, Workflow, item, op


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
