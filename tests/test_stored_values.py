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


@op
def maybe(i: int) -> {"o": Artifact(Path, optional=True)}:  # type: ignore[valid-type]
    if i % 2:
        Path(f"o{i}.txt").write_text(str(i))
        return {"o": Path(f"o{i}.txt")}
    return {"o": None}


def test_downloads_of_a_fan_out_with_holes_keep_them_as_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from dflow_async import Slices, download_artifact
    from dflow_async.cli import app

    monkeypatch.setenv("DFLOW_ASYNC_HOME", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    wf = Workflow("holes")
    slices = Slices(input_parameter=["i"], output_artifact=["o"])
    wf.add(Step("ms", maybe, parameters={"i": [0, 1, 2, 3]}, slices=slices))
    result = wf.run()
    art = result.records[0].outputs.artifacts["o"]
    assert [a is None for a in art] == [True, False, True, False]

    got = download_artifact(art, tmp_path / "api")
    assert got == [None, tmp_path / "api" / "o1.txt", None, tmp_path / "api" / "o3.txt"]
    assert got[3] is not None and got[3].read_text() == "3"

    cli = CliRunner().invoke(
        app, ["artifacts", "download", result.run_id, "ms", "o", str(tmp_path / "cli")]
    )
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.split() == [
        str(tmp_path / "cli" / "o1.txt"),
        str(tmp_path / "cli" / "o3.txt"),
    ]
    assert "skipped 2 of 4 entries that are None" in cli.stderr


@op
def read_all(fs: Artifact(list[Path])) -> int:  # type: ignore[valid-type]
    return len(fs)


def test_a_consumer_that_takes_no_holes_is_told_which_entries_are_none(tmp_path: Path) -> None:
    from dflow_async import Slices

    wf = Workflow("holes", store=str(tmp_path / "s"))
    slices = Slices(input_parameter=["i"], output_artifact=["o"])
    ms = Step("ms", maybe, parameters={"i": [0, 1, 2, 3]}, slices=slices)
    wf.add(ms)
    wf.add(Step("read", read_all, artifacts={"fs": ms.outputs.artifacts["o"]}))
    (rec,) = wf.run().query_step(name="read")
    assert rec.phase == "Failed"
    assert "SignatureError" in rec.error
    assert "entries [0, 2] are None" in rec.error
    assert "Artifact(list[Path | None])" in rec.error
