"""Stored artifact and BigParameter values met in unusual places: records reused from a run
on another store, and BigParameter values the scheduler itself computes with (a fan-out, a
condition, a key)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from dflow_async import (
    OP,
    OPIO,
    Artifact,
    BigParameter,
    OPIOSign,
    Slices,
    Step,
    Workflow,
    item,
    op,
)


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


# -- BigParameter values the scheduler computes with -------------------------------------------


@op
def gen_big() -> {"items": BigParameter(list), "n": BigParameter(int)}:  # type: ignore[valid-type]
    return {"items": [1, 2, 3], "n": 5}


@op
def double(x: int) -> int:
    return 2 * x


class DoubleBig(OP):
    """Takes its input as a BigParameter: a slice of a big list reaches it as a plain value."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"x": BigParameter(int)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"result": int})

    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"result": 2 * op_in["x"]})


def _fan_out(store: Path, executor: str, how: str) -> Workflow:
    wf = Workflow("bigfan", store=str(store), executor=executor)
    g = Step("gen", gen_big)
    items = g.outputs.parameters["items"]
    wf.add(g)
    if how == "slices":
        sliced = Slices(input_parameter=["x"], output_parameter=["result"])
        wf.add(Step("double", double, parameters={"x": items}, slices=sliced))
        wf.add(Step("big_port", DoubleBig, parameters={"x": items}, slices=sliced))
    else:
        wf.add(Step("double", double, parameters={"x": item}, with_param=items, key=f"d-{item}"))
    return wf


@pytest.mark.parametrize("executor", ["inline", "process"])
@pytest.mark.parametrize("how", ["slices", "with_param"])
def test_a_fan_out_over_a_big_list_takes_its_elements(
    how: str, executor: str, tmp_path: Path
) -> None:
    result = _fan_out(tmp_path, executor, how).run()
    assert result.status == "Succeeded", [r.errors for r in result.records]
    for rec in result.query_step(name="double") + result.query_step(name="big_port"):
        assert rec.outputs.parameters["result"] == [2, 4, 6]
    if how == "with_param":  # a per-slice key renders its item: the element, not a reference
        keys = [r.key for r in result.records if r.name.startswith("double[")]
        assert keys == ["d-1", "d-2", "d-3"]


@op
def one() -> int:
    return 1


def test_a_condition_and_a_key_see_big_values(tmp_path: Path) -> None:
    wf = Workflow("bigwhen", store=str(tmp_path))
    g = Step("gen", gen_big)
    n = g.outputs.parameters["n"]
    wf.add(g)
    wf.add(
        [
            Step("yes", one, when=n > 3),
            Step("no", one, when=n > 10),
            Step("text", one, when="{{steps.gen.outputs.parameters.n}} == 5"),
            Step("call", double, parameters={"x": n}, when=lambda inputs: inputs["x"] == 5),
            Step("keyed", one, key=f"k-{n}"),
            Step("expr", one, key=f"k-{n + 1}"),
        ]
    )
    result = wf.run()
    assert result.status == "Succeeded", [r.errors for r in result.records]
    phases = {r.name: r.phase for r in result.records}
    assert phases == {
        "gen": "Succeeded",
        "yes": "Succeeded",
        "no": "Skipped",
        "text": "Succeeded",
        "call": "Succeeded",
        "keyed": "Succeeded",
        "expr": "Succeeded",
    }
    assert [r.key for r in result.query_step(name="keyed") + result.query_step(name="expr")] == [
        "k-5",
        "k-6",
    ]


def test_a_step_loads_each_big_value_it_computes_with_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dflow_async._store import ArtifactStore

    reads: list[str] = []
    get_value = ArtifactStore.get_value

    def counted(self: ArtifactStore, ref: Any) -> object:
        reads.append(ref.digest)
        return get_value(self, ref)

    monkeypatch.setattr(ArtifactStore, "get_value", counted)
    wf = Workflow("bigonce", store=str(tmp_path))
    g = Step("gen", gen_big)
    items, n = g.outputs.parameters["items"], g.outputs.parameters["n"]
    wf.add(g)
    # the condition, the fan-out, the per-slice keys and the slices' items use both values
    wf.add(
        Step(
            "double",
            double,
            parameters={"x": item},
            with_param=items,
            when=n > 3,
            key=f"{n}-{item}",
        )
    )
    result = wf.run()
    assert result.status == "Succeeded", [r.errors for r in result.records]
    assert len(reads) == len(set(reads)) == 2  # n and items, once each: not per slice


@op
def wipe_values(store: str) -> int:
    # the store loses every BigParameter value between its producer and its consumers
    shutil.rmtree(Path(store) / "artifacts" / "values")
    return 0


@op
def total(xs: list) -> int:
    return sum(xs)


@pytest.mark.parametrize("executor", ["inline", "process"])
@pytest.mark.parametrize("consumer", ["sliced", "worker"])
def test_a_big_value_missing_from_the_store_fails_its_consumer_naming_the_input(
    consumer: str, executor: str, tmp_path: Path
) -> None:
    wf = Workflow("bigmissing", store=str(tmp_path), executor=executor)
    g = Step("gen", gen_big)
    wipe = Step("wipe", wipe_values, parameters={"store": str(tmp_path)}, dependencies=[g])
    items = g.outputs.parameters["items"]
    if consumer == "sliced":  # loaded by the scheduler, to slice it
        sliced = Slices(input_parameter=["x"], output_parameter=["result"])
        use = Step("use", double, parameters={"x": items}, slices=sliced, dependencies=[wipe])
    else:  # loaded by the worker, for the OP
        use = Step("use", total, parameters={"xs": items}, dependencies=[wipe])
    for step in (g, wipe, use):
        wf.add(step)
    result = wf.run()
    assert result.status == "Failed"
    (rec,) = result.query_step(name="use")
    assert rec.phase == "Failed"
    port = "x" if consumer == "sliced" else "xs"
    assert f"could not load the input {port!r}, a BigParameter" in rec.error, rec.error
    assert "is missing" in rec.error and "'gen'" in rec.error, rec.error
    if consumer == "sliced":
        assert "step 'use'" in rec.error


def test_a_sub_workflow_fans_out_over_a_big_list_it_takes_as_input(tmp_path: Path) -> None:
    from dflow_async import Steps

    sub = Steps("sub", inputs={"items": None, "n": 0})
    xs, n = sub.inputs.parameters["items"], sub.inputs.parameters["n"]
    sub.add(Step("each", double, parameters={"x": item}, with_param=xs, when=n > 3, key=f"{n}"))
    wf = Workflow("bigsub", store=str(tmp_path))
    g = Step("gen", gen_big)
    wf.add(g)
    out = g.outputs.parameters
    wf.add(Step("sub", sub, parameters={"items": out["items"], "n": out["n"]}))
    result = wf.run()
    assert result.status == "Succeeded", [r.errors for r in result.records]
    (rec,) = result.query_step(name="each")
    assert rec.outputs.parameters["result"] == [2, 4, 6] and rec.key == "5"


# -- a fan-out's BigParameter outputs, stacked into a list ------------------------------------


@op
def make_big(i: int) -> {"v": BigParameter(dict)}:  # type: ignore[valid-type]
    return {"v": {"i": i}}


@op
def show_list(s: list) -> str:
    return repr(s)


@op
def show_big_list(s: BigParameter(list)) -> str:  # type: ignore[valid-type]
    return repr(s)


@op
async def show_list_async(s: list) -> str:
    return repr(s)


@op
def show_dict(s: dict) -> str:
    return repr(s)


@op
def tenfold(x: dict) -> int:
    return 10 * x["i"]


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_a_fan_outs_stacked_big_outputs_reach_their_consumers_as_values(
    executor: str, tmp_path: Path
) -> None:
    """Each slice stores its BigParameter output; the stacked list holds their references,
    and every consumer (an OP's port of any kind, the scheduler's fan-outs, conditions and
    keys) gets the values in it, not the references."""
    from dflow_async._stored import BigValue

    wf = Workflow("bigstack", store=str(tmp_path), executor=executor)
    sliced = Slices(input_parameter=["i"], output_parameter=["v"])
    mk = Step("mk", make_big, parameters={"i": [1, 2]}, slices=sliced)
    wf.add(mk)
    v = mk.outputs.parameters["v"]
    over = Slices(input_parameter=["x"], output_parameter=["result"])
    wf.add(
        [
            Step("list", show_list, parameters={"s": v}),
            Step("big", show_big_list, parameters={"s": v}),
            Step("async", show_list_async, parameters={"s": v}),
            Step("literal", show_list, parameters={"s": [v, 3]}),
            Step("in_dict", show_dict, parameters={"s": {"a": v}}),
            Step("sliced", tenfold, parameters={"x": v}, slices=over),
            Step("items", tenfold, parameters={"x": item}, with_param=v, key=f"k-{item['i']}"),
            Step("yes", one, when=v[1]["i"] == 2),
            Step("no", one, when=v[1]["i"] == 3),
            Step("call", show_list, parameters={"s": v}, when=lambda ins: ins["s"][0]["i"] == 1),
            Step("keyed", one, key=f"key-{v[0]['i']}"),
        ]
    )
    result = wf.run()
    assert result.status == "Succeeded", [(r.name, r.errors) for r in result.records]
    values = [{"i": 1}, {"i": 2}]
    got = {r.name: r.outputs.parameters.get("result") for r in result.records}
    assert got["list"] == got["big"] == got["async"] == repr(values)
    assert got["literal"] == repr([values, 3])
    assert got["in_dict"] == repr({"a": values})
    assert got["sliced"] == got["items"] == [10, 20]
    assert [r.key for r in result.records if r.name.startswith("items[")] == ["k-1", "k-2"]
    phases = {r.name: r.phase for r in result.records}
    assert (phases["yes"], phases["no"], phases["call"]) == ("Succeeded", "Skipped", "Succeeded")
    assert result.query_step(name="keyed")[0].key == "key-1"
    # the producer's record keeps the references (a consumer loaded copies), users the values
    (rec,) = result.query_step(name="mk")
    assert [type(b) for b in rec.outputs.raw_parameters["v"]] == [BigValue, BigValue]
    assert rec.outputs.parameters["v"] == values


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_a_fan_out_of_fan_outs_stacks_big_outputs_into_lists_of_values(
    executor: str, tmp_path: Path
) -> None:
    """A sub-workflow fanned out, whose output is its own fan-out's stacked BigParameter
    outputs: a list of lists of references, loaded for the consumer, the records and the
    records of the run read back from its journal."""
    from dflow_async import Run, Steps

    sub = Steps("sub", inputs={"base": 0})
    sliced = Slices(input_parameter=["i"], output_parameter=["v"])
    inner = Step(
        "inner", make_big, parameters={"i": [sub.inputs.parameters["base"], 5]}, slices=sliced
    )
    sub.add(inner)
    sub.outputs.parameters["v"] = inner.outputs.parameters["v"]
    wf = Workflow("bignested", store=str(tmp_path), executor=executor)
    outer_slices = Slices(input_parameter=["base"], output_parameter=["v"])
    outer = Step("outer", sub, parameters={"base": [1, 2]}, slices=outer_slices)
    wf.add(outer)
    wf.add(Step("show", show_list, parameters={"s": outer.outputs.parameters["v"]}))
    result = wf.run()
    assert result.status == "Succeeded", [(r.name, r.errors) for r in result.records]
    values = [[{"i": 1}, {"i": 5}], [{"i": 2}, {"i": 5}]]
    assert result.query_step(name="show")[0].outputs.parameters["result"] == repr(values)
    assert result.query_step(name="outer")[0].outputs.parameters["v"] == values
    again = Run.open(result.run_dir)
    assert again.query_step(name="outer")[0].outputs.parameters["v"] == values
