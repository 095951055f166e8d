"""The public surface is exactly what ``__all__`` says, and it is sorted; misusing it gets an
error that says what was wrong and what to do."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import pytest

import dflow_async
from dflow_async import (
    OP,
    OPIO,
    Artifact,
    BigParameter,
    FatalError,
    OPIOSign,
    Result,
    Run,
    Step,
    Workflow,
    download_artifact,
    op,
)


def test_all_is_sorted_and_complete() -> None:
    names = dflow_async.__all__
    assert list(names) == sorted(names)
    public = {n for n in vars(dflow_async) if not n.startswith("_")}
    # submodules are reachable as attributes but are not part of the curated API
    modules = {n for n in public if type(getattr(dflow_async, n)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(names) - {"__version__"}
    for name in names:
        assert getattr(dflow_async, name) is not None


def test_core_never_imports_heavy_backends() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dflow_async, dflow_async.executors; "
        "dflow_async.executors.ProcessExecutor; "
        "bad = [m for m in ('dask', 'distributed', 'ray', 'kubernetes') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- querying a finished run


@op
def _make(n: int) -> {"x": int, "big": BigParameter(list), "f": Artifact(Path)}:  # type: ignore[valid-type]
    out = Path(f"out-{n}.txt")
    out.write_text(str(n))
    return {"x": n, "big": [n] * 3, "f": out}


@op
def _fail() -> int:
    raise FatalError("no")


@pytest.fixture
def ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Step, Result]:
    """A finished run of a step ``mk`` with output parameters ``x`` and ``big`` (a
    BigParameter) and an artifact ``f``, and of a step ``bad`` that failed."""
    monkeypatch.chdir(tmp_path)
    wf = Workflow("api")
    mk = Step("mk", _make, parameters={"n": 3})
    wf.add([mk, Step("bad", _fail, continue_on_failed=True)])
    return mk, wf.run().raise_for_status()


def test_query_step_refuses_an_unknown_phase(ran: tuple[Step, Result]) -> None:
    mk, result = ran
    assert [r.name for r in result.query_step(phase="Succeeded")] == ["mk"]
    assert [r.name for r in result.query_step(phase="Failed")] == ["bad"]
    assert result.query_step(phase=["Cancelled", "Skipped"]) == []
    with pytest.raises(ValueError, match=r"unknown phase 'Succeded'; did you mean 'Succeeded'\?"):
        result.query_step(phase="Succeded")
    with pytest.raises(ValueError, match="the phases are: Pending, Running, Succeeded, Failed"):
        result.query_step(phase=["Succeeded", "Done"])
    with pytest.raises(ValueError, match="did you mean 'Failed'"):
        Run.open(result.run_id).query_step(phase="FAILED")  # a run read from its journal too
    # an unknown step name or key is a fair question, with the answer "none"
    assert result.query_step(name="nope") == [] and result.query_step(key="nope") == []
    with pytest.raises(TypeError, match=r"query_step\(name=...\) .* got Step .* its name, 'mk'"):
        result.query_step(name=mk)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"query_step\(name=...\) .* got Step"):
        result.query_step(name=[mk])  # type: ignore[list-item]


def test_a_missing_output_of_a_step_record_names_the_step(ran: tuple[Step, Result]) -> None:
    _, result = ran
    run = Run.open(result.run_id)
    taken = [result.query_step(name="mk")[0], run.query_step("mk")[0]]
    taken += [r for r in run.records if r.name == "mk"]
    assert [r.path for r in taken] == ["mk"] * 3
    for rec in taken:
        params, arts = rec.outputs.parameters, rec.outputs.artifacts
        assert params["x"] == 3 and params["big"] == [3, 3, 3]  # a BigParameter, loaded
        assert params == {"x": 3, "big": [3, 3, 3]} and set(arts) == {"f"}
        # a Mapping still: in, .get, iteration raise nothing
        assert "missing" not in params and params.get("missing") is None
        assert arts.get("missing", 0) == 0 and sorted(params) == ["big", "x"]
        with pytest.raises(KeyError) as err:
            params["X"]
        assert err.value.args[0] == (
            "step 'mk' has no output parameter 'X'; did you mean 'x'? (it has: big, x)"
        )
        with pytest.raises(KeyError, match=r"step 'mk' has no output artifact 'g' \(it has: f\)"):
            arts["g"]
        # records travel (reuse_step= in another process): the names go along
        again = pickle.loads(pickle.dumps(rec))
        assert again.outputs.parameters == params
        with pytest.raises(KeyError, match="step 'mk' has no output artifact 'ff'; did you"):
            again.outputs.artifacts["ff"]
    (bad,) = [r for r in result.records if r.name == "bad"]
    with pytest.raises(KeyError, match=r"'bad' has no output parameter 'x' \(it has none: its"):
        bad.outputs.parameters["x"]
    with pytest.raises(KeyError, match="phase is Failed"):  # a predicate reads named outputs
        result.query_step(predicate=lambda r: r.outputs.parameters["x"] > 0)


def test_download_artifact_says_what_it_takes(ran: tuple[Step, Result], tmp_path: Path) -> None:
    mk, result = ran
    (rec,) = result.query_step(name="mk")
    dest = tmp_path / "dl"
    (copy,) = download_artifact(rec.outputs.artifacts["f"], dest)
    assert copy.read_text() == "3"
    wrong = {
        # a parameter's value, here or inside a list
        rec.outputs.parameters["x"]: r"got int 3, which holds no files \(a parameter's value\?\)",
        (rec.outputs.artifacts["f"], 7): r"got int 7, which holds no files",
        # workflow-time references: what the run gives instead
        mk.outputs.artifacts["f"]: (
            r"got <mk.outputs.artifacts\['f'\]>, .* no files until the workflow runs; run it, "
            r"then download result.query_step\(name='mk'\)\[0\].outputs.artifacts\['f'\]$"
        ),
        mk.outputs.parameters["x"]: (
            r"got <mk.outputs.parameters\['x'\]>, output parameter 'x' of step 'mk': a "
            r"parameter holds no files .*outputs.parameters\['x'\]\); it takes an artifact"
        ),
        mk: r"got step 'mk' itself: .*query_step\(name='mk'\)\[0\].outputs.artifacts\[name\]",
        rec: r"got the record of step 'mk': pass one of its artifacts, .* \(it has: f\)",
    }
    for value, message in wrong.items():
        with pytest.raises(TypeError, match="^download_artifact: " + message):
            download_artifact(value, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["out-3.txt"]  # nothing else was copied


# ---------------------------------------------------------------- @op


class _Double(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"a": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"b": int})

    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"b": 2 * op_in["a"]})


def test_op_refuses_what_is_an_op_already() -> None:
    with pytest.raises(TypeError, match=r"^@op got '_Double', which is already an OP class: use"):
        op(_Double)
    with pytest.raises(TypeError, match="an instance of OP class '_Double', which is already"):
        op(_Double())
    with pytest.raises(TypeError, match="@op function '_make', which is already an OP: use it"):
        op(_make)
    with pytest.raises(TypeError, match="@op decorates a function, got 3"):
        op(3)  # type: ignore[arg-type]


def _scaled(factor: int, x: int, offset: int = 0) -> {"y": int}:  # type: ignore[valid-type]
    """Scale x."""
    return {"y": factor * x + offset}


class _Adder:
    def __call__(self, a: int, b: int) -> int:
        return a + b


async def _ascaled(factor: int, x: int) -> int:
    return factor * x


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_op_of_a_partial(executor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    triple = op(functools.partial(_scaled, 3, offset=1))
    # named and documented after the function; inputs: what the partial leaves, a bound
    # keyword staying an input with its value as default; outputs: the function's annotation
    assert (triple.__name__, triple.__doc__) == ("_scaled", "Scale x.")
    assert repr(triple).endswith("._scaled>")
    assert list(triple.input_ports()) == ["x", "offset"]
    assert triple.input_ports()["offset"].default == 1
    assert list(triple.output_ports()) == ["y"]
    double = op(functools.partial(_scaled, factor=2))  # a keyword for a positional parameter
    assert list(double.input_ports()) == ["factor", "x", "offset"]
    assert double.input_ports()["factor"].default == 2
    anew = op(functools.partial(_ascaled, 5))
    assert anew.is_async and list(anew.output_ports()) == ["result"]
    assert op(functools.partial(_make, n=4)).__name__ == "_make"  # a partial of an @op
    with pytest.raises(TypeError, match=r"@op decorates a function \(or a functools.partial"):
        op(functools.partial(_Adder(), 1))  # a callable object has no name, no annotations
    wf = Workflow("partials", executor=executor)
    wf.add(
        [
            Step("t", triple, parameters={"x": 2}),
            Step("t0", triple, parameters={"x": 2, "offset": 0}),
            Step("d", double, parameters={"x": 2}),
            Step("a", anew, parameters={"x": 2}),
            Step("c3", triple, parameters={"x": 1}, cache=True),
        ]
    )
    # after c3: the same function and inputs, other bound arguments, so not c3's cache entry
    quadruple = op(functools.partial(_scaled, 4, offset=1))
    wf.add(Step("c4", quadruple, parameters={"x": 1}, cache=True))
    result = wf.run().raise_for_status()
    got = {r.name: r.outputs.parameters for r in result.records}
    assert got["t"]["y"] == 7 and got["t0"]["y"] == 6 and got["d"]["y"] == 4
    assert got["a"]["result"] == 10
    assert (got["c3"]["y"], got["c4"]["y"]) == (4, 5)


# ---------------------------------------------------------------- run ids name directories


@pytest.mark.parametrize("name", ["../x", "team/screen", "x\ny", " ", "", ".hidden", "-x", "é"])
def test_a_workflow_name_that_cannot_start_a_run_id_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"cannot start a run id .* use 1 to 248 ASCII letters"):
        Workflow(name)


@pytest.mark.parametrize("run_id", ["../../escaped", "a/b", "x\ny", "..", ".x", "-x", "a b"])
def test_a_run_id_that_is_not_one_path_component_is_refused(
    run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    wf = Workflow("w")
    wf.add(Step("f", _make, parameters={"n": 1}))
    for given in ("run_id", "resume"):
        with pytest.raises(ValueError, match=rf"{given}=.* is not a run id: .* one path compon"):
            wf.run(**{given: run_id})
    wf.name = "no/longer/valid"  # changed after the Workflow was made
    with pytest.raises(ValueError, match="workflow name 'no/longer/valid' cannot start a run"):
        wf.run()
    assert list(tmp_path.iterdir()) == []  # no run directory, here or anywhere


def test_names_and_run_ids_of_letters_digits_dashes_dots_and_underscores_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    wf = Workflow("Hello_World-2.0")
    wf.add(Step("f", _make, parameters={"n": 1}))
    assert wf.run().run_id.startswith("Hello_World-2.0-")
    long_id = "r" * 255
    assert wf.run(run_id=long_id).status == "Succeeded"
    assert wf.run(resume=long_id).status == "Succeeded"
    assert {r.run_id for r in dflow_async.list_runs()} >= {long_id}
    with pytest.raises(ValueError, match="1 to 255"):
        wf.run(run_id="r" * 256)
    Workflow("w" * 248)
    with pytest.raises(ValueError, match="1 to 248"):
        Workflow("w" * 249)
