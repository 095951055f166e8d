"""Stored artifact and BigParameter values met in unusual places: records reused from a run
on another store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dflow_async import Artifact, BigParameter, Step, Workflow, op


@op
def produce() -> {"f": Artifact(Path), "d": Artifact(Path), "big": BigParameter(list)}:  # type: ignore[valid-type]
    Path("f.txt").write_text("F")
    Path("d").mkdir()
    (Path("d") / "x.txt").write_text("X")
    return {"f": Path("f.txt"), "d": Path("d"), "big": [1, "two"]}


@op
def consume(f: Artifact(Path), d: Artifact(Path), big: list) -> str:  # type: ignore[valid-type]
    return f.read_text() + (d / "x.txt").read_text() + repr(big)


def _workflow(store: Path, executor: str) -> Workflow:
    wf = Workflow("reuse", store=str(store), executor=executor)
    p = Step("produce", produce, key="produce")
    wf.add(p)
    arts = p.outputs.artifacts
    big = p.outputs.parameters["big"]
    wf.add(
        Step(
            "consume", consume, artifacts={"f": arts["f"], "d": arts["d"]}, parameters={"big": big}
        )
    )
    return wf


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_reused_records_of_a_run_on_another_store_are_taken_into_this_one(
    executor: str, tmp_path: Path
) -> None:
    first = _workflow(tmp_path / "A", executor).run()
    assert first.status == "Succeeded"
    reused = first.query_step(key="produce")
    second = _workflow(tmp_path / "B", executor).run(reuse_step=reused)
    (rec,) = second.query_step(name="consume")
    assert rec.phase == "Succeeded", rec.errors
    assert rec.outputs.parameters["result"] == "FX[1, 'two']"
    # the artifacts are now in B's store: a later run on B does not need A
    store_b = _workflow(tmp_path / "B", executor).artifact_store()
    for art in reused[0].outputs.artifacts.values():
        assert store_b.exists(art.ref)


def test_a_reused_record_whose_store_is_gone_fails_naming_both_stores(tmp_path: Path) -> None:
    first = _workflow(tmp_path / "A", "inline").run()
    reused = first.query_step(key="produce")
    shutil.rmtree(tmp_path / "A")
    second = _workflow(tmp_path / "B", "inline").run(reuse_step=reused)
    (rec,) = second.query_step(name="consume")
    assert rec.phase == "Failed"
    assert "[infra]" in rec.error
    assert str(tmp_path / "A") in rec.error and str(tmp_path / "B") in rec.error
    assert "reuse_step" in rec.error
