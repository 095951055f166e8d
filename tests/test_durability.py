"""Durable runs with real processes: crash (SIGKILL) and resume, one driver per run, reuse,
caching, and journals that cannot be trusted."""

from __future__ import annotations

import contextlib
import functools
import gc
import linecache
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import types
import warnings
import weakref
from pathlib import Path
from typing import Any

import pytest

from dflow_async import (
    DAG,
    OP,
    OPIO,
    EditedOpWarning,
    OutputParameter,
    RetryPolicy,
    Run,
    Slices,
    Step,
    Steps,
    Workflow,
    _cache,
    item,
    op,
)
from dflow_async._cache import code_digest
from dflow_async._compile import definition_digest
from dflow_async._journal import JournalError, RunBusyError, read_run
from dflow_async.exceptions import WorkflowValidationError

SRC = Path(__file__).resolve().parents[1] / "src"

# A fan-out + chain + artifacts workflow whose every execution leaves a side-effect line.
CRASH_WF = """
import os, sys, time, random
from pathlib import Path
from dflow_async import Workflow, Step, Slices, Artifact, op

COUNTS = Path(os.environ["COUNTS"])

def mark(name):
    with open(COUNTS / name, "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(random.uniform(0.0, 0.03))

@op
def make(n: int) -> list[int]:
    mark("make")
    return list(range(n))

@op
def square(x: int) -> {"y": int, "f": Artifact(Path)}:
    mark(f"square-{x}")
    Path("sq.txt").write_text(str(x * x))
    return {"y": x * x, "f": Path("sq.txt")}

@op
def add_files(files: Artifact(list[Path]), base: int) -> int:
    mark("add_files")
    return base + sum(int(p.read_text()) for p in files)

@op
def inc(x: int, tag: str) -> int:
    mark(f"inc-{tag}")
    return x + 1

wf = Workflow("crashy")
m = Step("make", make, parameters={"n": 16})
sq = Step("square", square, parameters={"x": m.outputs.parameters["result"]},
          slices=Slices(input_parameter=["x"], output_parameter=["y"], output_artifact=["f"],
                        group_size=2, pool_size=3))
tot = Step("total", add_files, parameters={"base": 0},
           artifacts={"files": sq.outputs.artifacts["f"]})
wf.add(m); wf.add(sq); wf.add(tot)
prev = tot
for i in range(6):
    s = Step(f"inc{i}", inc, parameters={"x": prev.outputs.parameters["result"], "tag": str(i)})
    wf.add(s)
    prev = s

if __name__ == "__main__":
    mode, run_id = sys.argv[1], sys.argv[2]
    executor = sys.argv[3] if len(sys.argv) > 3 else "inline"
    if mode == "run":
        r = wf.run(run_id=run_id, executor=executor)
    else:
        r = wf.run(resume=run_id, executor=executor)
    print(r.status, r.query_step(name="inc5")[0].outputs.parameters["result"])
"""

EXPECTED = sum(x * x for x in range(16)) + 6


def _env(counts: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "COUNTS": str(counts)}


def _counts(counts: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in counts.iterdir()}


def _trial(tmp: Path, rng: random.Random, index: int) -> None:
    script = tmp / "crashwf.py"
    if not script.exists():
        script.write_text(CRASH_WF)
    counts = tmp / f"counts-{index}"
    counts.mkdir()
    run_id = f"crash-{index}"
    executor = "process" if index % 5 == 4 else "inline"
    env = _env(counts)
    proc = subprocess.Popen(
        [sys.executable, str(script), "run", run_id, executor],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = tmp / ".dflow-async" / "runs" / run_id / "journal.sqlite"
    deadline = time.monotonic() + 60
    while not journal.exists() and proc.poll() is None:  # kill only once the run exists
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_run(journal.parent)
    if before.status == "Running":  # killed mid-run: readers see that nobody drives it
        assert Run.open(run_id, store=tmp / ".dflow-async").status == "Interrupted"
    done_steps = {r.path for r in before.records if r.phase == "Succeeded"}
    done_units = {(path, unit) for path, units in before.units.items() for unit in units}
    resumed = subprocess.run(
        [sys.executable, str(script), "resume", run_id, executor],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split() == ["Succeeded", str(EXPECTED)], resumed.stdout
    seen = _counts(counts)
    # nothing the journal had recorded as finished ran a second time
    for path in done_steps:
        if path in ("make", "total") or path.startswith("inc"):
            name = path if not path.startswith("inc") else f"inc-{path[3:]}"
            name = "add_files" if path == "total" else name
            assert seen[name] == 1, (path, seen)
    for path, unit in done_units:
        assert path == "square"
        for x in (2 * unit, 2 * unit + 1):
            assert seen[f"square-{x}"] == 1, (unit, seen)
    # and every step ran at least once overall
    assert seen.get("inc-5", 0) >= 1


def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    trials = int(os.environ.get("DFLOW_ASYNC_CHAOS_TRIALS", "20"))  # `nox -s chaos`: 200
    rng = random.Random(int(os.environ.get("DFLOW_ASYNC_CHAOS_SEED", "20261126")))
    for index in range(trials):
        _trial(tmp_path, rng, index)


def test_clean_run_gives_the_same_outputs(tmp_path: Path) -> None:
    script = tmp_path / "crashwf.py"
    script.write_text(CRASH_WF)
    counts = tmp_path / "counts"
    counts.mkdir()
    done = subprocess.run(
        [sys.executable, str(script), "run", "clean", "inline"],
        cwd=tmp_path,
        env=_env(counts),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["Succeeded", str(EXPECTED)], done.stderr
    assert set(_counts(counts).values()) == {1}
    # resuming a finished run does nothing at all
    again = subprocess.run(
        [sys.executable, str(script), "resume", "clean", "inline"],
        cwd=tmp_path,
        env=_env(counts),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.stdout.split() == ["Succeeded", str(EXPECTED)], again.stderr
    assert set(_counts(counts).values()) == {1}


@op
def plus(x: int) -> int:
    return x + 1


@op
def squared(x: int) -> int:
    return x * x


@pytest.mark.parametrize("limit", ["rows", "variables"])
def test_a_burst_larger_than_one_statement_is_journaled_whole(
    tmp_path: Path, monkeypatch, limit: str
) -> None:
    """Rows go to SQLite many per statement (_journal._CHUNK of them at most, fewer when the
    SQLite in use takes fewer variables per statement): a run whose bursts hold more rows than
    one statement takes every step record and every fan-out unit, with outputs. (A small
    limit here, so that every burst is split, with a remainder.)"""
    from dflow_async import Slices, _journal

    monkeypatch.chdir(tmp_path)
    if limit == "rows":
        monkeypatch.setattr(_journal, "_CHUNK", 7)
    else:  # as an old SQLite (999 variables) would, only smaller: 3 steps rows a statement
        connect = _journal._connect

        def small_connect(path: Path, *, create: bool) -> sqlite3.Connection:
            conn = connect(path, create=create)
            conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 45)
            return conn

        monkeypatch.setattr(_journal, "_connect", small_connect)
    wf = Workflow("wide")
    width = 60
    wf.add([Step(f"p{i}", plus, parameters={"x": i}) for i in range(width)])
    wf.add(
        Step(
            "sq",
            squared,
            parameters={"x": list(range(width))},
            slices=Slices(input_parameter=["x"], output_parameter=["result"]),
        )
    )
    result = wf.run(run_id="wide")
    assert result.status == "Succeeded"
    snap = read_run(tmp_path / ".dflow-async" / "runs" / "wide")
    outputs = {r.path: r.outputs.parameters.get("result") for r in snap.records}
    assert len(outputs) == width + 1
    assert all(outputs[f"p{i}"] == i + 1 for i in range(width))
    assert outputs["sq"] == [x * x for x in range(width)]
    assert sorted(snap.units["sq"]) == list(range(width))
    assert [o["result"] for o in snap.units["sq"][width - 1]] == [(width - 1) ** 2]


HANG_WF = """
import os, sys
from dflow_async import Workflow, Step
from dflow_async.testing._ops import hang
wf = Workflow("busy")
wf.add(Step("hang", hang, parameters={"marker_dir": os.environ["MARKER_DIR"], "seconds": 60}))
if __name__ == "__main__":
    wf.run(run_id=sys.argv[1])
"""


def test_two_drivers_on_one_run_exactly_one_proceeds(tmp_path: Path, monkeypatch) -> None:
    script = tmp_path / "busy.py"
    script.write_text(HANG_WF)
    monkeypatch.setenv("MARKER_DIR", str(tmp_path))  # the same workflow in every process
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    first = subprocess.Popen(
        [sys.executable, str(script), "busy-1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("pid-*")):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        monkeypatch.chdir(tmp_path)
        sys.path.insert(0, str(tmp_path))
        try:
            import busy  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(tmp_path))
        with pytest.raises(RunBusyError, match="already being driven by pid"):
            busy.wf.run(resume="busy-1")
        cli = subprocess.run(
            [sys.executable, "-m", "dflow_async.cli", "resume", "busy-1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 2 and "already being driven" in cli.stderr
        assert first.poll() is None  # the first driver was not disturbed
    finally:
        first.kill()
        first.wait()
        (tmp_path / "release").write_text("")
    # once the first driver is gone (SIGKILL: the kernel drops its lock), resume proceeds
    run = Run.open("busy-1")
    assert run.status == "Interrupted"  # the journal says Running; no driver holds the run


@op
def counted(x: int, log: str) -> int:
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    return x * 10


def _keyed(log: Path) -> Workflow:
    wf = Workflow("keyed")
    a = Step("a", counted, parameters={"x": 1, "log": str(log)}, key="a-1")
    b = Step(
        "b", counted, parameters={"x": a.outputs.parameters["result"], "log": str(log)}, key="b"
    )
    wf.add(a)
    wf.add(b)
    return wf


def test_reuse_step_skips_matching_keys_and_takes_modified_outputs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "calls.txt"
    first = _keyed(log).run()
    assert log.read_text().split() == ["1", "10"]
    reused = first.query_step(key="a-1")[0]
    reused.modify_output_parameter("result", 7)
    second = _keyed(log).run(reuse_step=[reused])
    assert log.read_text().split() == ["1", "10", "7"]  # a was not executed, b got 7
    assert second.query_step(key="b")[0].outputs.parameters["result"] == 70
    # records read back from the journal of the first run work the same way
    from_journal = Run.open(first.run_id).query_step(key="a-1")
    third = _keyed(log).run(reuse_step=from_journal)
    assert log.read_text().split() == ["1", "10", "7", "10"]
    assert third.status == "Succeeded"


def test_modifying_an_output_a_record_does_not_have_is_refused(tmp_path, monkeypatch) -> None:
    """A misspelt name would be ignored by the run that reuses the record (the old value
    used, silently); Dflow refuses it too."""
    monkeypatch.chdir(tmp_path)
    record = _keyed(tmp_path / "calls.txt").run().query_step(key="a-1")[0]
    with pytest.raises(KeyError, match=r"step 'a' has no output parameter 'reslt'.*'result'"):
        record.modify_output_parameter("reslt", 7)
    with pytest.raises(KeyError, match=r"no output artifact 'out' to modify.*it has: none"):
        record.modify_output_artifact("out", tmp_path)
    assert record.outputs.parameters == {"result": 10}  # unchanged


CACHE_WF = """
import os
from dflow_async import Workflow, Step, op
@op
def work(x: int) -> int:
    with open(os.environ["LOG"], "a") as fh:
        fh.write("ran\\n")
    return x + BODY
wf = Workflow("cached")
wf.add(Step("work", work, parameters={"x": int(os.environ["X"])}, cache=True))
if __name__ == "__main__":
    r = wf.run()
    print(r.query_step(name="work")[0].outputs.parameters["result"], r.records[0].cached)
"""


def test_cache_hits_and_misses_including_a_changed_op_body(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    script = tmp_path / "cachewf.py"

    def run(body: int, x: int) -> list[str]:
        script.write_text(CACHE_WF.replace("BODY", str(body)))
        env = {**os.environ, "PYTHONPATH": str(SRC), "LOG": str(log), "X": str(x)}
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run(1, 5) == ["6", "False"]
    assert run(1, 5) == ["6", "True"]  # same code, same input: hit
    assert run(1, 6) == ["7", "False"]  # another input: miss
    assert run(2, 5) == ["7", "False"]  # changed OP body: miss
    assert log.read_text().count("ran") == 3
    cli = subprocess.run(
        [sys.executable, "-m", "dflow_async.cli", "cache", "clear"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
    )
    assert "removed 3 cached step results" in cli.stdout
    assert run(2, 5) == ["7", "False"]


def _cell(src: str, name: str | None) -> Any:
    """The OP a notebook cell defines, run as IPython runs one: its source kept in linecache
    under a name of the cell's own; ``name=None``: exec'd code with no source at all."""
    if name is not None:
        linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    ns: dict[str, Any] = {"__name__": "__main__", "op": op, "OP": OP, "OPIO": OPIO}
    exec(compile(src, name or "<string>", "exec"), ns)
    return ns["scale"] if "scale" in ns else ns["Scale"]


def _cached_run(store: Path, template: Any) -> tuple[Any, bool]:
    wf = Workflow("cell", store=store)
    wf.add(Step("s", template, parameters={"x": 10}, cache=True))
    result = wf.run()
    assert result.status == "Succeeded", result.records
    record = result.query_step(name="s")[0]
    return next(iter(record.outputs.parameters.values())), record.cached


SCALE_CELL = "@op\ndef scale(x: int) -> int:\n    return x * {n}\n"


def test_cache_misses_an_op_redefined_where_the_freed_one_was(tmp_path: Path) -> None:
    """A notebook cell edited and run again: the new function often takes the id of the old
    one, freed. The step cache kept code digests by id, so it gave the old code's results."""
    store = tmp_path / "store"
    first = _cell(SCALE_CELL.format(n=2), "<ipython-input-1>")
    assert _cached_run(store, first) == (20, False)
    assert _cached_run(store, first) == (20, True)
    edited = _cell(SCALE_CELL.format(n=3), "<ipython-input-2>").fn
    old_id = id(first.fn)
    del first
    gc.collect()
    # functions of the edited cell, until one lands where the freed one was (CPython reuses
    # a freed block within a few allocations of its size)
    made: list[Any] = []
    for _ in range(10_000):
        fn = types.FunctionType(edited.__code__, edited.__globals__, "scale")
        made.append(fn)
        if id(fn) == old_id:
            break
    else:
        pytest.skip("no function was given the freed one's id")
    fn.__annotations__ = edited.__annotations__
    assert _cached_run(store, op(fn)) == (30, False)
    assert _cached_run(store, op(fn)) == (30, True)


def _scale_by(k: Any) -> Any:
    @op
    def scale(x: int) -> int:
        return x * k

    return scale


def test_code_digests_are_kept_only_while_their_op_lives() -> None:
    """OPs made per request: the digests kept for them keep none alive, and go with them (they
    were kept by id, forever)."""
    before = len(_cache._CODE_DIGESTS)
    refs = []
    for k in range(50):
        made = _scale_by(k)
        code_digest(made)
        refs.append(weakref.ref(made.fn))
    del made
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert len(_cache._CODE_DIGESTS) <= before


SCALE_CLASS_CELL = """
class Scale(OP):
    @classmethod
    def get_input_sign(cls):
        return {{"x": int}}

    @classmethod
    def get_output_sign(cls):
        return {{"y": int}}

    def execute(self, op_in):
        return OPIO({{"y": op_in["x"] * {n}}})
"""


def test_cache_tells_apart_ops_exec_d_without_source(tmp_path: Path) -> None:
    """Code exec'd from a string has no source to read: its compiled code is digested, and
    x * 2 and x * 3 differ in their constants only (x.real, x.imag in their names only). A
    class's fallback was its name alone."""
    store = tmp_path / "store"
    assert _cached_run(store, _cell(SCALE_CELL.format(n=2), None)) == (20, False)
    assert _cached_run(store, _cell(SCALE_CELL.format(n=3), None)) == (30, False)
    assert _cached_run(store, _cell(SCALE_CELL.format(n=3), None)) == (30, True)  # same code
    names = [
        _cell(f"@op\ndef scale(x: int) -> int:\n    return (x + 2j).{attr}\n", None)
        for attr in ("real", "imag")
    ]
    assert code_digest(names[0]) != code_digest(names[1])
    assert _cached_run(store, _cell(SCALE_CLASS_CELL.format(n=2), None)) == (20, False)
    assert _cached_run(store, _cell(SCALE_CLASS_CELL.format(n=3), None)) == (30, False)
    assert _cached_run(store, _cell(SCALE_CLASS_CELL.format(n=3), None)) == (30, True)


def _scale_through_helper(k: int) -> Any:
    def helper(x: int) -> int:
        return x * k

    @op
    def scale(x: int) -> int:
        return helper(x)

    return scale


class _ScaleSigns(OP):
    """x in, y out: the signs of the scaling OPs below."""

    @classmethod
    def get_input_sign(cls) -> Any:
        return {"x": int}

    @classmethod
    def get_output_sign(cls) -> Any:
        return {"y": int}


def _scale_class(k: int) -> Any:
    class Scale(_ScaleSigns):
        def execute(self, op_in: Any) -> Any:
            return OPIO({"y": op_in["x"] * k})

    return Scale


def test_cache_tells_apart_closures_by_what_they_captured(tmp_path: Path) -> None:
    """OPs a factory makes share their source text: what they captured is digested too."""
    store = tmp_path / "store"
    for make in (_scale_by, _scale_through_helper, _scale_class):
        assert _cached_run(store, make(2)) == (20, False), make
        assert _cached_run(store, make(5)) == (50, False), make
        assert _cached_run(store, make(5)) == (50, True), make  # made again, same value


class Scaled(_ScaleSigns):
    """An OP configured through its instance: Scaled(2) and Scaled(5) are two OPs."""

    def __init__(self, k: int, guard: Any = None) -> None:
        self.k = k
        self.guard = guard

    def execute(self, op_in: Any) -> Any:
        with self.guard or contextlib.nullcontext():
            return OPIO({"y": op_in["x"] * self.k})


def test_cache_tells_apart_op_instances_by_their_attributes(tmp_path: Path) -> None:
    """Step("s", Scaled(2)) and Step("s", Scaled(5)) shared one cache entry: the digest
    read the OP's class only. An attribute that cannot be pickled (a lock) makes the
    instance's entries its own."""
    store = tmp_path / "store"
    assert _cached_run(store, Scaled(2)) == (20, False)
    assert _cached_run(store, Scaled(5)) == (50, False)
    assert _cached_run(store, Scaled(5)) == (50, True)  # made again, same configuration
    locked = Scaled(5, threading.Lock())
    assert _cached_run(store, locked) == (50, False)
    assert _cached_run(store, locked) == (50, True)
    assert _cached_run(store, Scaled(5, threading.Lock())) == (50, False)


def test_an_op_capturing_an_unpicklable_value_shares_no_cache_entry(tmp_path: Path) -> None:
    """A captured lock cannot be digested: only the very OP that cached a result finds it
    (a false hit would be worse than a miss), and a resume is not told that its code changed."""
    store = tmp_path / "store"

    def make(k: int) -> Any:
        lock = threading.Lock()

        @op
        def scale(x: int) -> int:
            with lock:
                return x * k

        return scale

    first = make(2)
    assert _cached_run(store, first) == (20, False)
    assert _cached_run(store, first) == (20, True)
    assert _cached_run(store, make(2)) == (20, False)


CAPTURED_CLASS_WF = """
import dataclasses
from dflow_async import op
from dflow_async._cache import code_digest

@dataclasses.dataclass
class Config:
    k: int

def make(config):
    @op
    def scale(x: int) -> int:
        return x * config.k
    return scale

print(code_digest(make(Config(2))), code_digest(make(Config(3))))
"""


def test_a_captured_instance_of_a_scripts_class_digests_alike_in_every_process(
    tmp_path: Path,
) -> None:
    """A script's classes are __main__'s: cloudpickle copies them with an id of the process's
    own, so that the digest of an OP capturing one of their instances changed in every
    process (a resume would say its code changed; the cache would never hit)."""
    script = tmp_path / "flow.py"
    script.write_text(CAPTURED_CLASS_WF)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    digests = [
        subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert digests[0] == digests[1]
    assert digests[0][0] != digests[0][1]


_FAILING = {"now": True}


def _flaky(k: int) -> Any:
    lock = threading.Lock()  # cannot be digested: made again, it is no edit all the same

    @op
    def flaky(x: int) -> int:
        if _FAILING["now"]:
            raise ValueError("boom")
        with lock:
            return x * k

    return flaky


def test_resume_warns_when_what_an_op_captured_changed(tmp_path: Path) -> None:
    """EditedOpWarning compares the same digests: an OP made again with another captured
    value is edited code; one made again alike (a new lock captured) is not."""

    def run(template: Any, run_id: str, resume: str | None = None) -> str:
        wf = Workflow("flaky", store=tmp_path / "store")
        wf.add(Step("s", template, parameters={"x": 1}))
        return wf.run(run_id=run_id, resume=resume).status

    _FAILING["now"] = True
    assert run(_flaky(2), "alike") == "Failed"
    assert run(_flaky(2), "other") == "Failed"
    _FAILING["now"] = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(_flaky(2), "alike", resume="alike") == "Succeeded"
    assert [w for w in caught if issubclass(w.category, EditedOpWarning)] == []
    with pytest.warns(EditedOpWarning, match=r"the code of \S*flaky changed"):
        assert run(_flaky(3), "other", resume="other") == "Succeeded"


def _locked_scale(lock: Any, x: int) -> int:
    with lock:
        return x * 2


def test_a_partial_binding_an_unpicklable_value_runs_and_shares_no_cache_entry(
    tmp_path: Path,
) -> None:
    """What a partial binds is digested: a lock cannot be, and every run (cache or not)
    failed on it, as the journal records each OP's digest. Only that very partial's OP finds
    the results it cached."""
    store = tmp_path / "store"
    first = op(functools.partial(_locked_scale, threading.Lock()))
    assert _cached_run(store, first) == (20, False)
    assert _cached_run(store, first) == (20, True)
    assert _cached_run(store, op(functools.partial(_locked_scale, threading.Lock()))) == (
        20,
        False,
    )


def _finished_run(tmp_path: Path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    return _keyed(tmp_path / "log.txt").run().run_id


def test_truncated_journal_is_detected(tmp_path: Path, monkeypatch) -> None:
    run_id = _finished_run(tmp_path, monkeypatch)
    journal = tmp_path / ".dflow-async" / "runs" / run_id / "journal.sqlite"
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) // 3])
    for f in journal.parent.glob("journal.sqlite-*"):
        f.unlink()
    with pytest.raises(JournalError, match=r"corrupted or truncated|no readable metadata"):
        Run.open(run_id)
    with pytest.raises(JournalError):
        _keyed(tmp_path / "log.txt").run(resume=run_id)


def test_garbage_journal_and_newer_schema_are_refused(tmp_path: Path, monkeypatch) -> None:
    run_id = _finished_run(tmp_path, monkeypatch)
    journal = tmp_path / ".dflow-async" / "runs" / run_id / "journal.sqlite"
    conn = sqlite3.connect(journal)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="schema version 99, newer than"):
        Run.open(run_id)
    journal.write_bytes(b"this is not a database" * 100)
    for f in journal.parent.glob("journal.sqlite-*"):
        f.unlink()
    with pytest.raises(JournalError, match="corrupted or truncated"):
        Run.open(run_id)


def test_resume_refuses_a_changed_definition(tmp_path: Path, monkeypatch) -> None:
    run_id = _finished_run(tmp_path, monkeypatch)
    changed = _keyed(tmp_path / "log.txt")
    changed.add(Step("extra", counted, parameters={"x": 3, "log": "x"}))
    with pytest.raises(JournalError, match="different workflow definition"):
        changed.run(resume=run_id)
    assert Run.open(run_id).status == "Succeeded"  # a refused resume changes nothing


def _pinned_op(fn: Any) -> Any:
    """An @op whose name does not depend on how pytest imports this module."""
    fn.__module__, fn.__qualname__ = "digest_pin", fn.__name__
    return op(fn)


def test_definition_digest_text_is_pinned() -> None:
    """Resume compares the digest a run recorded with the current workflow's, so the digest of
    a given definition may never change, across versions too (this value was computed when the
    test was added). A failure here means runs recorded before would refuse to resume."""

    @_pinned_op
    def make(n: int, label: str, scale: float, extra: Any = None) -> list[int]:
        return list(range(n))

    @_pinned_op
    def use(x: Any, tag: Any = "", where: Any = None) -> int:
        return 0

    inner = DAG("inner", inputs={"x": 1.5, "note": 'it\'s "quoted"\nnewline ü'})
    a = Step("a", use, parameters={"x": inner.inputs.parameters["x"], "tag": "plain"})
    b = Step(
        "b",
        use,
        parameters={"x": a.outputs.parameters["result"] + 1, "where": ("p q", -2)},
        when=a.outputs.parameters["result"] > 0,
        dependencies=[a],
    )
    c = Step("c", use, parameters={"x": b.outputs.parameters["result"]}, dependencies=[a])
    inner.add(a)
    inner.add(b)
    inner.add(c)
    inner.outputs.parameters["out"] = OutputParameter(
        value_from_parameter=b.outputs.parameters["result"]
    )

    main = Steps("main")
    m = Step(
        "make",
        make,
        parameters={
            "n": 3,
            "label": "l\u00e9 'x'",
            "scale": 0.1,
            "extra": {"k": [1, 2.5, None, True, {"z": (3, "t")}], 2: "two"},
        },
    )
    fan = Step(
        "fan",
        use,
        parameters={"x": m.outputs.parameters["result"], "tag": "t"},
        slices=Slices(
            input_parameter=["x"], output_parameter=["result"], group_size=2, pool_size=3
        ),
        key=f"fan-{item}",
    )
    each = Step(
        "each",
        use,
        parameters={"x": item, "tag": f"v{item}"},
        with_param=m.outputs.parameters["result"],
    )
    sub = Step("sub", inner, parameters={"x": 2.0})
    main.add(m)
    main.add([fan, each])
    main.add(sub)

    compiled = Workflow("pinned", steps=main).validate()
    pinned = "sha256:f493a6da9e24c3160a4549d6c1d5f22b0944b5aa24b8b2f99d9ceb07819b936c"
    assert definition_digest(compiled) == pinned


def test_a_script_run_resumes_from_the_cli_and_logs_show_failed_attempts(tmp_path: Path) -> None:
    """``python flow.py`` names its OPs ``__main__.*`` and ``dflow-async`` loads the file as
    ``flow``: resume must see the same definition either way."""
    (tmp_path / "flow.py").write_text(
        textwrap.dedent("""
        import os
        from dflow_async import Workflow, Step, op

        @op
        def f(x: int) -> int:
            print(f"f sees FAIL={os.environ.get('FAIL')}")
            if os.environ.get("FAIL"):
                raise RuntimeError("failing on purpose")
            return x

        wf = Workflow("flow")
        wf.add(Step("f", f, parameters={"x": 1}))
        if __name__ == "__main__":
            print(wf.run(run_id="flow-1").status)
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200"}
    env.pop("FAIL", None)

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
        )

    first = run("flow.py", FAIL="1")
    assert first.stdout.strip() == "Failed", first.stderr
    logs = run("-m", "dflow_async.cli", "logs", "flow-1", "f")
    assert "f sees FAIL=1" in logs.stdout, logs.stdout + logs.stderr
    # and the traceback, which the one-line error in the record leaves out
    assert "Traceback (most recent call last):" in logs.stdout, logs.stdout
    assert 'raise RuntimeError("failing on purpose")' in logs.stdout
    assert "_worker.py" not in logs.stdout  # the OP's frames, not the library's around them
    resumed = run("-m", "dflow_async.cli", "resume", "flow-1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert Run.open("flow-1", store=tmp_path / ".dflow-async").status == "Succeeded"
    logs = run("-m", "dflow_async.cli", "logs", "flow-1", "f").stdout
    assert "f sees FAIL=1" in logs and "f sees FAIL=None" in logs


@op
def fails_on_one(x: int) -> int:
    print(f"slice sees {x}")
    if x == 1:
        raise ValueError(f"cannot take {x}")
    return x


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_the_log_of_a_failed_attempt_ends_with_its_traceback(tmp_path: Path, executor: str) -> None:
    wf = Workflow("tb", store=tmp_path / "store")
    fan = Slices(input_parameter=["x"], output_parameter=["result"])
    wf.add(Step("fan", fails_on_one, parameters={"x": [0, 1, 2]}, slices=fan))
    result = wf.run(executor=executor)
    assert result.status == "Failed"
    (rec,) = result.query_step(name="fan")
    logs = {Path(w).parent.name: Path(w + ".log").read_text() for w in rec.workdirs}
    assert logs["s0"] == "slice sees 0\n" and logs["s2"] == "slice sees 2\n"
    failed = logs["s1"]
    assert failed.startswith("slice sees 1\nTraceback (most recent call last):\n"), failed
    assert "in fails_on_one\n" in failed
    assert failed.endswith("ValueError: cannot take 1\n"), failed
    assert "_worker.py" not in failed


def test_cli_list_get_logs(tmp_path: Path) -> None:
    script = tmp_path / "talk.py"
    script.write_text(
        textwrap.dedent("""
        from dflow_async import Workflow, Step, Slices, op
        @op
        def talk(x: int) -> int:
            print(f"hello {x} [/x]", end="")  # no newline at the end, and no markup
            return x
        @op
        def mute(x: int) -> int:
            return x
        wf = Workflow("talk")
        wf.add(Step("say", talk, parameters={"x": 42}, key="say-42"))
        wf.add(Step("hush", mute, parameters={"x": [1, 2]},
                    slices=Slices(input_parameter=["x"], output_parameter=["result"])))
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dflow_async.cli", *args],
            cwd=tmp_path,
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
        )

    assert cli("run", "talk.py").returncode == 0
    listing = cli("list").stdout
    assert "talk-" in listing and "Succeeded" in listing
    run_id = next(w for w in listing.split() if w.startswith("talk-"))
    got = cli("get", run_id).stdout
    assert "say" in got and "key=say-42" in got and "Succeeded" in got
    assert "hello 42 [/x]\n" in cli("logs", run_id, "say").stdout
    assert "hello 42 [/x]\n" in cli("logs", run_id, "say-42").stdout
    hushed = cli("logs", run_id, "hush").stdout.splitlines()
    assert hushed == ["==> hush (s0/a0) <==", "(no output)", "==> hush (s1/a0) <==", "(no output)"]
    missing = cli("get", "nope-123")
    assert missing.returncode == 2 and "no run 'nope-123'" in missing.stderr


def test_reuse_step_matches_per_slice_keys(tmp_path: Path, monkeypatch) -> None:
    from dflow_async import Slices

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "calls.txt"

    def fan() -> Workflow:
        wf = Workflow("fan")
        wf.add(
            Step(
                "sq",
                counted,
                parameters={"x": [1, 2, 3, 4], "log": str(log)},
                slices=Slices(input_parameter=["x"], output_parameter=["result"]),
                key="sq-{{item}}",
            )
        )
        return wf

    first = fan().run()
    assert sorted(log.read_text().split()) == ["1", "2", "3", "4"]
    kept = first.query_step(key=["sq-1", "sq-3"])
    assert [r.outputs.parameters["result"] for r in kept] == [20, 40]
    kept[0].modify_output_parameter("result", -1)
    second = fan().run(reuse_step=kept)
    assert sorted(log.read_text().split()) == ["1", "1", "2", "3", "3", "4"]  # 2 and 4 reused
    assert second.query_step(name="sq")[0].outputs.parameters["result"] == [10, -1, 30, 40]


def test_journal_writes_from_two_threads_queue_instead_of_interleaving(tmp_path: Path) -> None:
    """A cancelled run abandons the flusher's worker thread mid-write (asyncio cancellation
    does not wait for threads) while the last write of the run starts in another thread: both
    share one SQLite connection, so their transactions must queue. They used to interleave,
    and Ctrl-C ended with "cannot commit - no transaction is active" instead of the resume hint."""
    import threading

    from dflow_async._journal import Journal

    journal = Journal.create(tmp_path / "run", meta={"status": "Running"})
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(name: str) -> None:
        start.wait()
        try:
            for i in range(300):
                journal.write(({}, [], [], {f"{name}-{i % 10}": str(i)}))
        except BaseException as exc:  # collected: an exception in a thread fails nothing
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("flusher", "last")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    journal.close()
    assert failures == []
    meta = read_run(tmp_path / "run").meta
    assert meta["flusher-9"] == "299" and meta["last-9"] == "299"


# -- outputs the journal cannot hold ------------------------------------------------------


def _mark(marker_dir: str, name: str) -> bool:
    """Count an execution; True once the test has "fixed" the OPs (for the resume)."""
    with open(Path(marker_dir) / name, "a") as fh:
        fh.write("x\n")
    return (Path(marker_dir) / "fixed").exists()


def _runs(marker_dir: Path, name: str) -> int:
    path = marker_dir / name
    return len(path.read_text().split()) if path.exists() else 0


@op
def first_step(marker_dir: str) -> int:
    _mark(marker_dir, "first")
    return 1


@op
def lock_until_fixed(x: int, marker_dir: str) -> Any:
    import threading

    return x + 1 if _mark(marker_dir, "bad") else threading.Lock()


@op
async def alock_until_fixed(x: int, marker_dir: str) -> Any:
    import threading

    return x + 1 if _mark(marker_dir, "bad") else threading.Lock()


@op
def uses(x: Any, marker_dir: str) -> int:
    _mark(marker_dir, "uses")
    return 10 * x


def _unpicklable_wf(marker_dir: Path, how: str) -> Workflow:
    bad_op = alock_until_fixed if how == "async" else lock_until_fixed
    wf = Workflow("unpicklable")
    first = Step("first", first_step, parameters={"marker_dir": str(marker_dir)})
    bad = Step(
        "bad",
        bad_op,
        parameters={"x": first.outputs.parameters["result"], "marker_dir": str(marker_dir)},
        # a user failure: a policy that does not name "user" does not retry it
        retries=RetryPolicy(max_retries=2, backoff=0, jitter=0),
        timeout=60 if how == "timed" else None,  # the scheduler's other path to the outcome
    )
    after = Step(
        "uses",
        uses,
        parameters={"x": bad.outputs.parameters["result"], "marker_dir": str(marker_dir)},
    )
    for step in (first, bad, after):
        wf.add(step)
    return wf


@pytest.mark.parametrize("how", ["plain", "async", "timed"])
def test_an_output_the_journal_cannot_hold_fails_its_step_and_resume_reruns_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """It used to end the whole run with the journal writer's pickling error (a TypeError in
    an ExceptionGroup, from another thread), after the step had been reported succeeded."""
    monkeypatch.chdir(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    result = _unpicklable_wf(marks, how).run()
    assert result.status == "Failed"
    (first,) = result.query_step(name="first")
    (bad,) = result.query_step(name="bad")
    assert first.phase == "Succeeded"
    assert bad.phase == "Failed" and bad.attempts == 1, bad.errors
    error = bad.error or ""
    assert error.startswith("attempt 0: [user] step 'bad' returned a value of type _thread.lock")
    assert "output 'result'" in error and "cannot be pickled" in error
    assert "journal" in error and "resumed run" in error
    assert "Return picklable values" in error and "Artifact output" in error
    assert _runs(marks, "uses") == 0
    # the journal holds what happened, and only that
    snapshot = read_run(result.run_dir)
    assert snapshot.status == "Failed"
    phases = {r.name: r.phase for r in snapshot.records}
    assert phases["first"] == "Succeeded" and phases["bad"] == "Failed"
    assert snapshot.records[0].outputs.parameters["result"] == 1
    # resumed once the OP returns something picklable: only the failed step and what it
    # blocked run
    (marks / "fixed").write_text("")
    resumed = _unpicklable_wf(marks, how).run(resume=result.run_id)
    assert resumed.status == "Succeeded", [r.errors for r in resumed.records]
    assert resumed.query_step(name="uses")[0].outputs.parameters["result"] == 20
    assert (_runs(marks, "first"), _runs(marks, "bad"), _runs(marks, "uses")) == (1, 2, 1)
    assert read_run(result.run_dir).status == "Succeeded"


@op
def gen_at_two(x: int, marker_dir: str) -> Any:
    fixed = _mark(marker_dir, f"slice-{x}")
    return (i for i in range(3)) if x == 2 and not fixed else [x, {"sq": x * x}]


def _fan_wf(marker_dir: Path) -> Workflow:
    wf = Workflow("unpicklable-fan")
    wf.add(
        Step(
            "fan",
            gen_at_two,
            parameters={"x": [0, 1, 2, 3], "marker_dir": str(marker_dir)},
            slices=Slices(input_parameter=["x"], output_parameter=["result"]),
        )
    )
    return wf


def test_a_slice_whose_output_the_journal_cannot_hold_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    result = _fan_wf(marks).run()
    assert result.status == "Failed"
    (fan,) = result.query_step(name="fan")
    assert fan.phase == "Failed" and fan.failed_slices == 1
    assert "[user] step 'fan' (slice 2) returned a value of type generator" in (fan.error or "")
    (marks / "fixed").write_text("")
    resumed = _fan_wf(marks).run(resume=result.run_id)
    assert resumed.status == "Succeeded"
    assert resumed.query_step(name="fan")[0].outputs.parameters["result"] == [
        [x, {"sq": x * x}] for x in range(4)
    ]
    # the slices that had finished were journaled, and were not run again
    assert [_runs(marks, f"slice-{x}") for x in range(4)] == [1, 1, 2, 1]


@op
def nested_lock(x: int) -> Any:
    import threading

    return {"ok": x, "held": [threading.Lock()]}


def test_continue_on_failed_goes_on_past_an_output_the_journal_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    wf = Workflow("unpicklable-tolerated")
    bad = Step("bad", nested_lock, parameters={"x": 1}, continue_on_failed=True)
    # ordered after it, using nothing of it
    later = Step("later", first_step, parameters={"marker_dir": str(tmp_path)}, dependencies=[bad])
    wf.add(bad)
    wf.add(later)
    result = wf.run()
    (rec,) = result.query_step(name="bad")
    assert rec.phase == "Failed"
    assert "returned a value of type dict for its output 'result', holding a value that " in (
        rec.error or ""
    )
    assert result.query_step(name="later")[0].phase == "Succeeded"
    assert result.status == "Succeeded"
    assert read_run(result.run_dir).status == "Succeeded"


def test_without_journal_an_unpicklable_output_is_kept_and_a_cache_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what records outputs checks them: a run with journal=False keeps the value, as
    before; a cached step cannot keep it, and fails (it used to end the run too)."""
    monkeypatch.chdir(tmp_path)
    wf = Workflow("unpicklable-unjournaled")
    wf.add(Step("bad", nested_lock, parameters={"x": 1}))
    unjournaled = wf.run(journal=False)
    assert unjournaled.status == "Succeeded"
    assert unjournaled.records[0].outputs.parameters["result"]["ok"] == 1
    cached = Workflow("unpicklable-cached")
    cached.add(Step("bad", nested_lock, parameters={"x": 2}, cache=True))
    for journal in (False, True):
        result = cached.run(journal=journal)
        (rec,) = result.records
        assert result.status == "Failed" and rec.phase == "Failed"
        assert "[user] step 'bad' returned a value of type dict" in (rec.error or "")
        assert ("cache=True" in (rec.error or "")) is not journal


def test_a_reused_record_the_journal_cannot_hold_stops_the_run_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No step of the run returned it, so no step can fail for it: the journal's writer says
    which step's outputs it could not record (it used to raise the bare pickling error)."""
    import threading

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "calls.txt"
    first = _keyed(log).run(journal=False)
    (reused,) = first.query_step(key="a-1")
    reused.modify_output_parameter("result", threading.Lock())
    wf = _keyed(log)
    with pytest.raises(BaseExceptionGroup) as info:
        wf.run(reuse_step=[reused], run_id="reused-lock")
    assert info.group_contains(JournalError, match="the outputs of step 'a' cannot be recorded")
    assert read_run(wf.store_path() / "runs" / "reused-lock").status == "Cancelled"


# ---------------------------------------------------------------- what a resume goes on with

# Started with parameters, killed while `gate` blocks (until the file "open" exists).
STARTED_WF = """
import multiprocessing, os, sys, time
from pathlib import Path
from dflow_async import Step, Steps, Workflow, op

HERE = Path(__file__).parent

@op
def gate(x: int) -> int:
    if not (HERE / "open").exists():
        (HERE / "blocked").write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
    return x

@op
def show(limit: int, where: Path, pair: tuple) -> str:
    return f"{limit} {where.as_posix()} {pair} {multiprocessing.current_process().name}"

entry = Steps("entry", inputs={"limit": 10, "where": Path("default"), "pair": (0, 0)})
p = entry.inputs.parameters
g = Step("gate", gate, parameters={"x": p["limit"]})
s = Step(
    "show", show,
    parameters={"limit": g.outputs.parameters["result"], "where": p["where"], "pair": p["pair"]},
)
entry.add(g)
entry.add(s)
wf = Workflow("started", steps=entry)
GIVEN = {"limit": 3, "where": Path("data/in.txt"), "pair": (1, "b")}

if __name__ == "__main__":
    mode, run_id = sys.argv[1], sys.argv[2]
    if mode == "start":
        wf.run(run_id=run_id, parameters=GIVEN)
    else:
        other = {**GIVEN, "limit": 4}
        try:
            wf.run(resume=run_id, parameters=other)
        except Exception as exc:
            print(type(exc).__name__, exc)
"""


def _start_and_kill(tmp_path: Path, argv: list[str], env: dict[str, str]) -> None:
    """Run ``argv`` in tmp_path until a step of it blocks (it writes "blocked"), then
    SIGKILL it: a run that stops without a word, its journal saying Running."""
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "blocked").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the run never reached its blocking step"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.communicate()
    (tmp_path / "blocked").unlink()
    (tmp_path / "open").write_text("")  # a resumed run goes past the gate


def test_a_resumed_run_goes_on_with_the_parameters_it_was_started_with(tmp_path: Path) -> None:
    """`dflow-async resume` (which takes no parameters) used the template's defaults for
    the steps left: one run mixed two parameter sets (limit 10 after limit 3)."""
    (tmp_path / "flow.py").write_text(STARTED_WF)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    _start_and_kill(tmp_path, [sys.executable, "flow.py", "start", "p-1"], env)

    other = subprocess.run(
        [sys.executable, "flow.py", "resume-other", "p-1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.stdout.startswith("JournalError run p-1 was started with other parameters"), (
        other.stdout + other.stderr
    )
    assert "'limit': started with 3, given 4" in other.stdout
    assert "leave parameters= out" in other.stdout
    journal = tmp_path / ".dflow-async" / "runs" / "p-1"
    assert read_run(journal).meta["epoch"] == "1"  # the refused resume took nothing over

    resumed = subprocess.run(
        [sys.executable, "-m", "dflow_async.cli", "resume", "p-1", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = Run.open("p-1", store=tmp_path / ".dflow-async")
    assert run.status == "Succeeded"
    (show,) = run.query_step(name="show")
    assert show.outputs.parameters["result"] == "3 data/in.txt (1, 'b') MainProcess"


@op
def fails_once(limit: int, where: Path, marker: str) -> str:
    if not Path(marker).exists():
        Path(marker).write_text("")
        raise RuntimeError("the first attempt fails")
    return f"{limit} {where.as_posix()}"


def _failing_once(marker: Path) -> Workflow:
    entry = Steps("entry", inputs={"limit": 10, "where": Path("default"), "marker": str(marker)})
    p = entry.inputs.parameters
    entry.add(
        Step(
            "use",
            fails_once,
            parameters={"limit": p["limit"], "where": p["where"], "marker": p["marker"]},
        )
    )
    return Workflow("fails-once", steps=entry)


def test_resume_takes_the_same_parameters_again_and_refuses_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    given = {"limit": 3, "where": Path("a/b")}
    for run_id, again in (("same", dict(given)), ("left-out", None)):
        wf = _failing_once(tmp_path / f"marker-{run_id}")
        assert wf.run(run_id=run_id, parameters=given).status == "Failed"
        with pytest.raises(JournalError, match=r"'limit': started with 3, given 4"):
            wf.run(resume=run_id, parameters={**given, "limit": 4})
        with pytest.raises(JournalError, match=r"'where': started with .*, given \(not given\)"):
            wf.run(resume=run_id, parameters={"limit": 3})
        assert Run.open(run_id).status == "Failed"  # refused: the run is as it was
        result = wf.run(resume=run_id, parameters=again)
        assert result.status == "Succeeded"
        assert result.query_step(name="use")[0].outputs.parameters["result"] == "3 a/b"


def test_a_parameter_the_journal_cannot_keep_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    monkeypatch.chdir(tmp_path)
    wf = _failing_once(tmp_path / "marker")
    with pytest.raises(WorkflowValidationError) as info:
        wf.run(parameters={"limit": threading.Lock()}, run_id="locked")
    assert "gives 'limit' a _thread.lock value, which the run's journal cannot keep" in str(
        info.value
    )
    assert "journal=False" in str(info.value)
    assert not (tmp_path / ".dflow-async" / "runs" / "locked").exists()


# Killed while `gate` blocks; then `a` and `b` each wait a moment for the other to arrive,
# which they never do under parallelism=1.
PLACED_WF = """
import multiprocessing, os, sys, time
from pathlib import Path
from dflow_async import Step, Workflow, op
from dflow_async.executors import ProcessExecutor

HERE = Path(__file__).parent

@op
def gate() -> int:
    if not (HERE / "open").exists():
        (HERE / "blocked").write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
    return 0

@op
def meet(me: str, other: str) -> str:
    (HERE / f"arrived-{me}").write_text("")
    seen = "alone"
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and seen == "alone":
        if (HERE / f"arrived-{other}").exists():
            seen = "met"
        time.sleep(0.02)
    (HERE / f"arrived-{me}").unlink()
    return f"{seen} {multiprocessing.current_process().name}"

def build(executor):
    wf = Workflow("placed", executor=executor)
    wf.add(Step("gate", gate))
    wf.add([Step(n, meet, {"me": n, "other": o}) for n, o in (("a", "b"), ("b", "a"))])
    return wf

wf = build("inline")

if __name__ == "__main__":
    mode, run_id = sys.argv[1], sys.argv[2]
    if mode == "start-object":  # an object given to run(), not the workflow's own
        wf.run(run_id=run_id, executor=ProcessExecutor(max_workers=1), parallelism=1)
    elif mode == "start-own":
        build(ProcessExecutor(max_workers=1)).run(run_id=run_id, parallelism=1)
    elif mode == "resume-own":
        print(build(ProcessExecutor(max_workers=1)).run(resume=run_id).status)
    else:
        try:
            print(wf.run(resume=run_id).status)
        except Exception as exc:
            print(type(exc).__name__, exc)
"""


def _placed(run: Run) -> dict[str, str]:
    return {r.name: r.outputs.parameters["result"] for r in run.query_step(name=["a", "b"])}


def test_a_resumed_run_goes_on_with_the_executor_and_parallelism_it_was_started_with(
    tmp_path: Path,
) -> None:
    """`dflow-async run -e process -p 1`, killed, then `dflow-async resume`: the steps left ran
    on the workflow's own executor (inline) with no limit, in the driver process."""
    (tmp_path / "flow.py").write_text(PLACED_WF)
    env = {**os.environ, "PYTHONPATH": str(SRC), "DFLOW_ASYNC_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "dflow_async.cli"]
    _start_and_kill(tmp_path, [*cli, "run", "flow.py", "-q", "-e", "process", "-p", "1"], env)
    (run_id,) = os.listdir(tmp_path / "home" / "runs")
    resumed = subprocess.run(
        [*cli, "resume", run_id, "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = Run.open(run_id, store=tmp_path / "home")
    assert _placed(run) == {"a": "alone dflow-async-worker", "b": "alone dflow-async-worker"}


def test_resume_names_an_executor_object_it_cannot_build_again(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(PLACED_WF)
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # the workflow's own executor object: its code builds it again for the resume
    _start_and_kill(tmp_path, [sys.executable, "flow.py", "start-own", "own"], env)
    assert run("flow.py", "resume-own", "own").stdout.split() == ["Succeeded"]
    store = tmp_path / ".dflow-async"
    assert _placed(Run.open("own", store=store)) == {
        "a": "alone dflow-async-worker",
        "b": "alone dflow-async-worker",
    }

    # one given to run(): the resume says so, and takes an executor named instead
    (tmp_path / "open").unlink()
    _start_and_kill(tmp_path, [sys.executable, "flow.py", "start-object", "given"], env)
    refused = run("flow.py", "resume", "given").stdout
    assert refused.startswith(
        "JournalError run given was started on an executor object ('process', given to "
        "run(executor=...)), which a resume cannot build again"
    ), refused
    assert "`dflow-async resume given --executor process`" in refused
    cli = run("-m", "dflow_async.cli", "resume", "given")
    assert cli.returncode == 2 and "cannot build again" in cli.stderr, cli.stderr
    assert read_run(store / "runs" / "given").meta["epoch"] == "1"  # refusals took nothing over
    inline = run("-m", "dflow_async.cli", "resume", "given", "--executor", "inline", "-q")
    assert inline.returncode == 0, inline.stdout + inline.stderr
    # the executor named instead, with the parallelism the run was started with
    assert _placed(Run.open("given", store=store)) == {
        "a": "alone MainProcess",
        "b": "alone MainProcess",
    }


EDITED_WF = """
import sys
from dflow_async import Workflow, Step, op

@op
def first(x: int) -> int:
    return x + 1

@op
def second(x: int) -> int:
    if FAIL:
        raise ValueError("boom")
    return x * 2

wf = Workflow("edited")
a = Step("a", first, parameters={"x": 1})
wf.add(a)
wf.add(Step("b", second, parameters={"x": a.outputs.parameters["result"]}))
if __name__ == "__main__":
    print(wf.run(run_id="edited-1", resume="edited-1" if sys.argv[1:] else None).status)
"""


def test_resume_after_editing_an_op_names_it_in_a_warning(tmp_path: Path) -> None:
    """Fix-and-resume is what resume is for, but the steps that finished keep their old
    results: the resume says which OPs changed instead of mixing the two silently."""
    script = tmp_path / "flow.py"
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def run(body: str, *args: str) -> subprocess.CompletedProcess[str]:
        script.write_text(EDITED_WF.replace("FAIL", body))
        return subprocess.run(
            [sys.executable, str(script), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )

    assert run("True").stdout.strip() == "Failed"
    same = run("True", "resume")  # nothing edited: no warning
    assert same.stdout.strip() == "Failed" and "EditedOpWarning" not in same.stderr, same.stderr
    fixed = run("False", "resume")
    assert fixed.stdout.strip() == "Succeeded", fixed.stderr
    assert "EditedOpWarning: run edited-1: the code of __main__.second changed" in fixed.stderr
    # attributed to the line that ran the workflow, not to the library's or anyio's
    assert f"{script}:20: EditedOpWarning" in fixed.stderr, fixed.stderr
    assert "__main__.first" not in fixed.stderr
    b = Run.open("edited-1", store=tmp_path / ".dflow-async").query_step(name="b")[0]
    assert b.outputs.parameters["result"] == 4


LOADS: list[int] = []


def _loaded_marker() -> Marker:
    LOADS.append(1)
    return Marker()


class Marker:
    """An output the journal pickles; reading it back counts in LOADS."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_loaded_marker, ())


@op
def marked() -> Marker:
    return Marker()


def test_run_open_takes_a_run_id() -> None:
    for wrong in (None, ""):
        with pytest.raises(TypeError, match=r"Run\.open\(\) takes a run id"):
            Run.open(wrong)  # type: ignore[arg-type]


def test_listing_runs_reads_no_outputs(tmp_path: Path, monkeypatch) -> None:
    """``list_runs()`` (and ``dflow-async list``) read each run's metadata and step count
    only: listing a store used to load every value of every run it kept."""
    from dflow_async import list_runs

    monkeypatch.chdir(tmp_path)
    for i in range(2):
        wf = Workflow("marked")
        wf.add(Step("m", marked))
        assert wf.run(run_id=f"marked-{i}").status == "Succeeded"
    LOADS.clear()
    runs = list_runs()
    assert [(r.run_id, r.status, r.step_count) for r in runs] == [
        ("marked-0", "Succeeded", 1),
        ("marked-1", "Succeeded", 1),
    ]
    assert LOADS == []
    assert isinstance(runs[1].query_step(name="m")[0].outputs.parameters["result"], Marker)
    assert LOADS == [1]  # read when asked for, once
    assert len(runs[1].records) == 1 and LOADS == [1]


KILLED_FANOUT_WF = """
import os, signal, sys, time
from dflow_async import Workflow, Step, Slices, op

@op
def sim(x: int) -> int:
    print(f"slice {x} ran")
    if x == 2 and os.environ.get("KILL"):
        time.sleep(0.5)  # the journal has written slices 0 and 1 by then
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10

wf = Workflow("killed")
wf.add(Step("sim", sim, parameters={"x": [0, 1, 2, 3]},
            slices=Slices(input_parameter=["x"], output_parameter=["result"], pool_size=1)))
if __name__ == "__main__":
    print(wf.run(run_id="killed-1", resume="killed-1" if sys.argv[1:] else None).status)
"""


def test_a_resumed_fan_out_keeps_the_attempts_and_logs_of_slices_before_the_crash(
    tmp_path: Path,
) -> None:
    """The step's record names every slice's work dir (where its log is) and counts every
    attempt, those before the crash included: it used to know only the resumed part's."""
    script = tmp_path / "flow.py"
    script.write_text(KILLED_FANOUT_WF)

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), *args],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(SRC), **extra},
            capture_output=True,
            text=True,
        )

    assert run(KILL="1").returncode == -signal.SIGKILL
    assert run("resume").stdout.strip() == "Succeeded"
    (rec,) = Run.open("killed-1", store=tmp_path / ".dflow-async").query_step(name="sim")
    assert rec.outputs.parameters["result"] == [0, 10, 20, 30]
    assert rec.attempts == 4  # slices 0 and 1 before the crash, 2 and 3 after it
    logs = [Path(w + ".log").read_text() for w in rec.workdirs]
    assert sorted(logs) == [f"slice {x} ran\n" for x in range(4)]


INPUTS_WF = """
import os, sys
from pathlib import Path
from dflow_async import Artifact, Workflow, Step, op

@op
def read(f: Artifact(Path), d: Artifact(Path)) -> str:
    if os.environ.get("FAIL"):
        raise ValueError("boom")
    return f.read_text() + (d / "x.txt").read_text()

wf = Workflow("inputs")
wf.add(Step("read", read, artifacts={"f": Path("in.txt"), "d": Path("tree")}))
if __name__ == "__main__":
    print(wf.run(run_id="inputs-1", resume="inputs-1" if sys.argv[1:] else None).status)
"""


def test_resume_after_editing_a_local_input_names_it_in_a_warning(tmp_path: Path) -> None:
    """Local inputs are read where they are: a step that had not run before the crash reads
    them as edited since. The resume says which ones changed (a file, a file in a directory)."""
    (tmp_path / "flow.py").write_text(INPUTS_WF)
    (tmp_path / "in.txt").write_text("a")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "x.txt").write_text("x")

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "flow.py", *args],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(SRC), **extra},
            capture_output=True,
            text=True,
        )

    assert run(FAIL="1").stdout.strip() == "Failed"
    same = run("resume", FAIL="1")
    assert same.stdout.strip() == "Failed" and "Warning" not in same.stderr, same.stderr
    (tmp_path / "tree" / "x.txt").write_text("y")
    os.utime(tmp_path / "in.txt", ns=(1, 1))  # touched only: a changed mtime counts too
    edited = run("resume")
    assert edited.stdout.strip() == "Succeeded", edited.stderr
    assert "flow.py:15: EditedInputWarning: run inputs-1: local input artifacts" in edited.stderr
    assert f"{tmp_path / 'in.txt'}, {tmp_path / 'tree'};" in edited.stderr
