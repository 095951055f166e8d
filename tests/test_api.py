"""The public surface is exactly what ``__all__`` says, and it is sorted; misusing it gets an
error that says what was wrong and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

import dflow_async
from dflow_async import Artifact, Result, Run, Step, Workflow, op


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
def _make(n: int) -> {"x": int, "f": Artifact(Path)}:  # type: ignore[valid-type]
    out = Path(f"out-{n}.txt")
    out.write_text(str(n))
    return {"x": n, "f": out}


@pytest.fixture
def ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Step, Result]:
    """A finished run of one step ``mk`` with an output parameter ``x`` and artifact ``f``."""
    monkeypatch.chdir(tmp_path)
    wf = Workflow("api")
    mk = Step("mk", _make, parameters={"n": 3})
    wf.add(mk)
    return mk, wf.run().raise_for_status()


def test_query_step_refuses_an_unknown_phase(ran: tuple[Step, Result]) -> None:
    mk, result = ran
    assert [r.name for r in result.query_step(phase="Succeeded")] == ["mk"]
    assert result.query_step(phase=["Failed", "Skipped"]) == []
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
