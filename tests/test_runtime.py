"""End-to-end behaviour of the scheduler on the inline executor."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path

import anyio
import pytest

from dflow_async import (
    DAG,
    OPIO,
    Artifact,
    FatalError,
    OutputParameter,
    RetryPolicy,
    Slices,
    Step,
    Steps,
    TransientError,
    Workflow,
    current_context,
    if_expression,
    item,
    op,
)

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@op
def plus1(iter: int) -> {"iter": int}:  # type: ignore[valid-type]
    return {"iter": iter + 1}


@op
def ident(x: int = 0) -> int:
    return x


def make_loop(limit: int) -> Steps:
    loop = Steps("loop", inputs={"iter": 0, "limit": limit})
    p = Step(
        "plus1",
        plus1,
        parameters={"iter": loop.inputs.parameters["iter"]},
        key=f"iter-{loop.inputs.parameters['iter']}",
    )
    loop.add(p)
    again = p.outputs.parameters["iter"] < loop.inputs.parameters["limit"]
    nxt = Step(
        "next",
        loop,
        parameters={"iter": p.outputs.parameters["iter"], "limit": loop.inputs.parameters["limit"]},
        when=again,
    )
    loop.add(nxt)
    loop.outputs.parameters["iter"] = OutputParameter(
        value_from_expression=if_expression(
            _if=again, _then=nxt.outputs.parameters["iter"], _else=p.outputs.parameters["iter"]
        )
    )
    return loop


def test_a_rendered_key_naming_a_second_execution_fails_that_step() -> None:
    """A loop's key that leaves out the iteration renders alike every time: the run went on
    with four records of one key, and a run reusing them gave the first iteration the last
    one's outputs (the loop ended early, "succeeded"). Validation refuses repeated literal
    keys; a repeated rendered key fails the step that repeats it, naming the first."""
    loop = Steps("loop", inputs={"iter": 0, "limit": 4})
    p = loop.inputs.parameters
    inc = Step("plus1", plus1, parameters={"iter": p["iter"]}, key=f"inc-{p['limit']}")
    again = inc.outputs.parameters["iter"] < p["limit"]
    loop.add(inc)
    loop.add(
        Step(
            "next",
            loop,
            parameters={"iter": inc.outputs.parameters["iter"], "limit": p["limit"]},
            when=again,
        )
    )
    result = Workflow("dupkey", steps=loop).run()
    assert result.status == "Failed"
    (first,) = result.query_step(key="inc-4")
    assert first.path == "plus1" and first.phase == "Succeeded"
    (repeat,) = [r for r in result.records if r.path == "next/plus1"]
    assert repeat.phase == "Failed" and repeat.key is None
    assert "key 'inc-4' already names step 'plus1' of this run" in repeat.error

    # per-slice keys are names too: one repeating another step's key fails the fan-out
    wf = Workflow("dupslice")
    wf.add(Step("other", ident, parameters={"x": 0}, key="slice-1"))
    wf.add(Step("fan", ident, parameters={"x": item}, with_param=[0, 1, 2], key=f"slice-{item}"))
    result = wf.run()
    assert result.status == "Failed"
    (fan,) = result.query_step(name="fan")
    assert fan.phase == "Failed"
    assert "key 'slice-1' already names step 'other' of this run" in fan.error


def test_recursion_loop_with_keys_and_conditional_output() -> None:
    result = Workflow("rec", steps=make_loop(5)).run()
    assert result.status == "Succeeded"
    assert result.outputs["parameters"]["iter"] == 5
    keys = [r.key for r in result.query_step(phase="Succeeded") if r.key]
    assert keys == [f"iter-{i}" for i in range(5)]
    (third,) = result.query_step(key="iter-2")
    assert third.path == "next/next/plus1"
    assert third.outputs.parameters["iter"] == 3


def test_deep_recursion_does_not_exhaust_the_stack() -> None:
    result = Workflow("deep", steps=make_loop(400)).run()
    assert result.status == "Succeeded"
    assert result.outputs["parameters"]["iter"] == 400


def test_long_sequential_steps_of_skipped_steps() -> None:
    wf = Workflow("skips")
    for i in range(3000):
        wf.add(Step(f"s{i}", ident, when=False))
    result = wf.run()
    assert result.status == "Succeeded"
    assert {r.phase for r in result.records} == {"Skipped"}


def test_dflow_style_string_condition_and_placeholder_keys() -> None:
    wf = Workflow("strings")
    a = Step("a", ident, parameters={"x": 3})
    wf.add(a)
    hi = Step("hi", ident, parameters={"x": 1}, when="%s > 2" % a.outputs.parameters["result"])
    lo = Step("lo", ident, parameters={"x": 1}, when="%s <= 2" % a.outputs.parameters["result"])
    both = Step("both", ident, when="{{steps.a.outputs.parameters.result}} == 3 && true")
    wf.add([hi, lo, both])
    result = wf.run()
    phases = {r.name: r.phase for r in result.records}
    assert phases == {"a": "Succeeded", "hi": "Succeeded", "lo": "Skipped", "both": "Succeeded"}


def test_expressions_formatted_into_keys_are_evaluated() -> None:
    dag = DAG("exprkeys", inputs={"a": 5})
    p = dag.inputs.parameters
    s1 = Step("s1", ident, parameters={"x": p["a"]}, key=f"k-{p['a'] + 1}")
    s2 = Step("s2", ident, parameters={"x": 2}, key="d-%s" % (s1.outputs.parameters["result"] * 2))
    big = if_expression(s1.outputs.parameters["result"] > 3, "big", "small")
    s3 = Step("s3", ident, parameters={"x": 3}, key=f"{big}-{p['a'] - 1}")
    dag.add(s1)
    dag.add(s2)
    dag.add(s3)
    result = Workflow("exprkeys", dag=dag).run()
    assert result.status == "Succeeded", [r.errors for r in result.records]
    assert {r.name: r.key for r in result.records} == {"s1": "k-6", "s2": "d-10", "s3": "big-4"}
    # the keys' references are dependencies: s2 and s3 ran after s1
    (first,) = result.query_step(name="s1")
    assert all(r.start >= first.end for r in result.records if r.name != "s1")
    # the same definition formats to the same key template (run digests depend on it)
    assert f"{p['a'] + 1}" == f"{p['a'] + 1}" != f"{p['a'] + 2}"


def test_with_param_items_and_per_slice_keys() -> None:
    @op
    def area(w: int, h: int) -> int:
        return w * h

    wf = Workflow("items")
    rects = [{"w": 1, "h": 2}, {"w": 3, "h": 4}]
    wf.add(
        Step(
            "area",
            area,
            parameters={"w": item["w"], "h": item["h"]},
            with_param=rects,
            key="area-{{item.w}}",
        )
    )
    result = wf.run()
    (parent,) = result.query_step(name="area")
    assert parent.outputs.parameters["result"] == [2, 12]
    assert result.query_step(key="area-3")[0].outputs.parameters["result"] == 12


def test_slices_over_upstream_list_with_group_size() -> None:
    @op
    def make(n: int) -> list[int]:
        return list(range(n))

    wf = Workflow("slices")
    m = Step("make", make, parameters={"n": 23})
    sq = Step(
        "sq",
        plus1,
        parameters={"iter": m.outputs.parameters["result"]},
        slices=Slices(input_parameter=["iter"], output_parameter=["iter"], group_size=5),
    )
    wf.add(m)
    wf.add(sq)
    wf.add(Step("sum", ident, parameters={"x": 0}))
    result = wf.run()
    assert result.query_step(name="sq")[0].outputs.parameters["iter"] == list(range(1, 24))


def test_sliced_artifacts_each_slice_in_its_own_directory() -> None:
    @op
    def write(n: int) -> {"files": Artifact(list[Path])}:  # type: ignore[valid-type]
        paths = []
        for i in range(n):
            Path(f"in{i}.txt").write_text(str(i))
            paths.append(Path(f"in{i}.txt"))
        return {"files": paths}

    @op
    def double(f: Artifact(Path)) -> {"out": Artifact(Path)}:  # type: ignore[valid-type]
        Path("out.txt").write_text(str(2 * int(f.read_text())))  # same name in every slice
        return {"out": Path("out.txt")}

    wf = Workflow("art")
    w = Step("write", write, parameters={"n": 4})
    d = Step(
        "double",
        double,
        artifacts={"f": w.outputs.artifacts["files"]},
        slices=Slices(input_artifact=["f"], output_artifact=["out"]),
    )
    wf.add(w)
    wf.add(d)
    result = wf.run()
    outs = result.query_step(name="double")[0].outputs.artifacts["out"]
    assert [Path(p).read_text() for p in outs] == ["0", "2", "4", "6"]
    assert len({str(p) for p in outs}) == 4


def test_retries_transient_then_fatal_is_final(tmp_path: Path) -> None:
    @op
    def flaky(marker: str) -> int:
        attempt = current_context().attempt
        if attempt < 2:
            raise TransientError(f"try {attempt}")
        return attempt

    @op
    def fatal(x: int) -> int:
        raise FatalError("input is physically impossible")

    fast = RetryPolicy(max_retries=3, backoff=0.01, jitter=0.0)
    wf = Workflow("retry")
    wf.add(Step("flaky", flaky, parameters={"marker": str(tmp_path)}, retries=fast))
    result = wf.run()
    (rec,) = result.records
    assert rec.phase == "Succeeded" and rec.attempts == 3
    assert rec.outputs.parameters["result"] == 2

    wf2 = Workflow("fatal")
    wf2.add(Step("fatal", fatal, parameters={"x": 1}, retries=fast))
    (rec2,) = wf2.run().records
    assert rec2.phase == "Failed" and rec2.attempts == 1 and "FatalError" in rec2.error


def test_retry_on_user_errors_when_asked() -> None:
    @op
    def boom() -> int:
        if current_context().attempt == 0:
            raise RuntimeError("first try fails")
        return 1

    policy = RetryPolicy(max_retries=1, backoff=0.0, jitter=0.0, retry_on={"user"})
    wf = Workflow("user-retry")
    wf.add(Step("boom", boom, retries=policy))
    (rec,) = wf.run().records
    assert rec.phase == "Succeeded" and rec.attempts == 2


def test_continue_on_failed_lets_the_workflow_go_on() -> None:
    @op
    def bad() -> int:
        raise ValueError("broken")

    wf = Workflow("cof")
    b = Step("bad", bad, continue_on_failed=True)
    wf.add(b)
    wf.add(Step("uses", ident, parameters={"x": b.outputs.parameters["result"]}))
    wf.add(Step("independent", ident, parameters={"x": 2}))
    result = wf.run()
    phases = {r.name: r.phase for r in result.records}
    assert result.status == "Succeeded"
    assert phases == {"bad": "Failed", "uses": "Skipped", "independent": "Succeeded"}


def test_continue_on_num_success_threshold_not_met_fails() -> None:
    @op
    def odd_fails(x: int) -> int:
        if x % 2:
            raise ValueError("odd")
        return x

    wf = Workflow("num")
    wf.add(
        Step(
            "fan",
            odd_fails,
            parameters={"x": [0, 1, 2, 3]},
            slices=Slices(input_parameter=["x"], output_parameter=["result"]),
            continue_on_num_success=3,
        )
    )
    result = wf.run()
    assert result.status == "Failed"
    assert result.records[0].failed_slices == 2


def test_sub_workflow_outputs_feed_the_parent_dag() -> None:
    inner = DAG("inner", inputs={"a": 1})
    s = Step("s", plus1, parameters={"iter": inner.inputs.parameters["a"]})
    inner.add(s)
    inner.outputs.parameters["out"] = OutputParameter(
        value_from_parameter=s.outputs.parameters["iter"]
    )
    dag = DAG("outer")
    call = Step("call", inner, parameters={"a": 41})
    after = Step("after", ident, parameters={"x": call.outputs.parameters["out"]})
    dag.add([after, call])
    result = Workflow("sub", dag=dag).run()
    assert result.query_step(name="after")[0].outputs.parameters["result"] == 42
    assert result.query_step(name="call/s")[0].outputs.parameters["iter"] == 42


def test_sync_ops_on_threads_each_get_their_own_cwd() -> None:
    @op
    def write_here(x: int) -> {"f": Artifact(Path), "cwd": str}:  # type: ignore[valid-type]
        Path("same-name.txt").write_text(str(x))
        time.sleep(0.01)  # overlap with the other slices on other threads
        return {"f": Path("same-name.txt"), "cwd": os.getcwd()}

    wf = Workflow("cwd")
    wf.add(
        Step(
            "w",
            write_here,
            parameters={"x": list(range(8))},
            slices=Slices(input_parameter=["x"], output_parameter=["cwd"], output_artifact=["f"]),
        )
    )
    result = wf.run()
    rec = result.records[0]
    assert [Path(p).read_text() for p in rec.outputs.artifacts["f"]] == [str(i) for i in range(8)]
    assert len(set(rec.outputs.parameters["cwd"])) == 8
    assert Path.cwd() == Path(os.getcwd())  # the driver's cwd never moved


@pytest.mark.parametrize("timeout", [None, 20.0])
def test_a_finished_sync_step_is_reported_while_its_thread_runs_a_long_one(
    timeout: float | None,
) -> None:
    """One worker thread runs ``quick`` and then picks up ``slow``; ``quick``'s outcome must
    reach the scheduler meanwhile, so its dependant runs (and unblocks ``slow``) at once
    instead of after ``slow`` ends (and ``quick`` is not charged ``slow``'s time against its
    timeout)."""
    import threading

    released = threading.Event()

    @op
    def quick() -> int:
        return 1

    @op
    def slow() -> bool:
        return released.wait(timeout=30)  # False: nobody released it in time

    @op
    def release(x: int) -> int:
        released.set()
        return x

    dag = DAG("stall")
    q = Step("quick", quick, timeout=timeout)
    dag.add(q)
    dag.add(Step("slow", slow, timeout=timeout and 3 * timeout))
    dag.add(Step("release", release, parameters={"x": q.outputs.parameters["result"]}))
    result = Workflow("stall", dag=dag, executor="inline").run()
    assert result.status == "Succeeded", [r.errors for r in result.records]
    (rec,) = result.query_step(name="slow")
    assert rec.outputs.parameters["result"] is True


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_every_sync_attempt_starts_in_an_empty_directory(executor: str) -> None:
    """Attempts that leave nothing behind share a reused scratch directory; whatever an
    attempt leaves (a file, a directory, even one it then emptied) must not reach the next."""

    @op
    def leaves(x: int) -> {"found": list, "kept": str}:  # type: ignore[valid-type]
        found = sorted(os.listdir("."))
        if x % 4 == 1:
            Path(f"file-{x}.txt").write_text(str(x))
        elif x % 4 == 2:
            Path(f"dir-{x}").mkdir()
            (Path(f"dir-{x}") / "inner.txt").write_text(str(x))
        elif x % 4 == 3:
            Path("tmp.txt").write_text("gone")
            os.remove("tmp.txt")
        return {"found": found, "kept": ",".join(sorted(os.listdir(".")))}

    wf = Workflow("empty-cwd", executor=executor)
    wf.add(
        Step(
            "l",
            leaves,
            parameters={"x": list(range(40))},
            slices=Slices(input_parameter=["x"], output_parameter=["found", "kept"], pool_size=1),
        )
    )
    result = wf.run()
    assert result.status == "Succeeded", result.records[0].errors
    rec = result.records[0]
    assert rec.outputs.parameters["found"] == [[]] * 40
    for x, workdir in enumerate(rec.workdirs):
        kept = rec.outputs.parameters["kept"][x]
        if x % 4 in (1, 2):  # what it left was moved to its own work dir
            assert kept and sorted(os.listdir(workdir)) == kept.split(",")
        else:
            assert kept == ""


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_a_failed_attempt_keeps_what_it_wrote_and_the_next_starts_empty(executor: str) -> None:
    """A failing OP's files are its own (kept in its work dir for debugging), never found in
    the work dir of whatever runs next in the same thread or process."""

    @op
    def writes_then_fails() -> int:
        Path("partial.dat").write_text("half done")
        raise ValueError("boom")

    @op
    def look() -> list:
        return sorted(os.listdir("."))

    wf = Workflow("failed-cwd", executor=executor, parallelism=1)
    bad = Step("bad", writes_then_fails, continue_on_failed=True)
    wf.add(bad)
    wf.add(Step("look", look, dependencies=[bad]))
    result = wf.run()
    (failed,) = result.query_step(name="bad")
    (looked,) = result.query_step(name="look")
    assert failed.phase == "Failed" and looked.phase == "Succeeded"
    assert looked.outputs.parameters["result"] == []
    assert (Path(failed.workdirs[0]) / "partial.dat").read_text() == "half done"


def test_runs_do_not_leak_file_descriptors() -> None:
    @op
    def plain(x: int) -> int:
        return x

    def run_once() -> None:
        wf = Workflow("fds")
        wf.add(
            Step(
                "p",
                plain,
                parameters={"x": list(range(20))},
                slices=Slices(input_parameter=["x"], output_parameter=["result"]),
            )
        )
        assert wf.run().status == "Succeeded"

    run_once()  # warm-up: imports, logging and the like open what they keep
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        run_once()
    after = len(os.listdir("/proc/self/fd"))
    assert after <= before, f"{after - before} descriptors left open by 5 runs"


class _Gauge:
    """Counts OPs running at once, per group (async OPs share the loop: no lock needed)."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    async def visit(self, group: str, seconds: float) -> None:
        self.now[group] = self.now.get(group, 0) + 1
        self.peak[group] = max(self.peak.get(group, 0), self.now[group])
        await asyncio.sleep(seconds)
        self.now[group] -= 1


def test_template_parallelism_limits_its_own_steps_and_slices() -> None:
    gauge = _Gauge()

    @op
    async def busy(group: str, x: int = 0) -> int:
        await gauge.visit(group, 0.02)
        return x

    inner = DAG("inner", inputs={"tag": "in"}, parallelism=2)
    inner.add(
        Step(
            "fan",
            busy,
            parameters={"group": inner.inputs.parameters["tag"], "x": list(range(6))},
            slices=Slices(input_parameter=["x"], output_parameter=["result"]),
        )
    )
    for i in range(3):
        inner.add(Step(f"solo{i}", busy, parameters={"group": inner.inputs.parameters["tag"]}))

    outer = Steps("outer", parallelism=3)
    outer.add([Step(f"o{i}", busy, parameters={"group": "outer"}) for i in range(8)])
    outer.add([Step(f"sub{i}", inner, parameters={"tag": f"inner{i}"}) for i in range(2)])
    result = Workflow("limits", steps=outer).run()
    assert result.status == "Succeeded"
    assert gauge.peak["outer"] == 3
    # each run of the inner DAG keeps to its own limit; the two runs overlap
    assert gauge.peak["inner0"] == 2
    assert gauge.peak["inner1"] == 2
    assert len([r for r in result.records if r.phase == "Succeeded"]) == 8 + 2 + 2 * 4


def test_template_parallelism_holds_retries_too() -> None:
    """A retry that falls due while its template's slots are taken waits for one."""
    gauge = _Gauge()
    tries: list[int] = []

    @op
    async def flaky() -> int:
        tries.append(len(tries))
        await gauge.visit("dag", 0.01)
        if len(tries) == 1:
            raise TransientError("first try fails")
        return 1

    @op
    async def slow() -> int:
        await gauge.visit("dag", 0.3)  # busy when flaky's retry falls due
        return 2

    dag = DAG("one-at-a-time", parallelism=1)
    dag.add(Step("flaky", flaky, retries=RetryPolicy(max_retries=2, backoff=0.05, jitter=0)))
    dag.add(Step("slow", slow))
    result = Workflow("retry-limit", dag=dag).run()
    assert result.status == "Succeeded", [r.errors for r in result.records]
    assert len(tries) == 2
    assert gauge.peak == {"dag": 1}


def test_template_parallelism_survives_a_failing_step_while_others_wait() -> None:
    @op
    async def fails() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("no")

    @op
    async def fine() -> int:
        await asyncio.sleep(0.01)
        return 1

    dag = DAG("waiting", parallelism=1)
    dag.add(Step("bad", fails))
    for i in range(5):
        dag.add(Step(f"ok{i}", fine))
    result = Workflow("limit-fail", dag=dag).run()  # must end, not hang
    assert result.status == "Failed"
    (bad,) = result.query_step("bad")
    assert bad.phase == "Failed"


def test_template_parallelism_must_be_positive() -> None:
    with pytest.raises(ValueError, match="parallelism must be an int >= 1"):
        DAG("d", parallelism=0)


def test_output_artifact_outside_workdir_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("x")

    @op
    def escape() -> {"f": Artifact(Path)}:  # type: ignore[valid-type]
        return {"f": Path("../../../../elsewhere.txt")}

    wf = Workflow("escape")
    wf.add(Step("escape", escape))
    (rec,) = wf.run().records
    assert rec.phase == "Failed"
    assert "outside its work directory" in rec.error


def test_signature_violations_fail_the_step_with_port_names() -> None:
    class Wrong(__import__("dflow_async").OP):
        @classmethod
        def get_input_sign(cls):
            return {"x": int}

        @classmethod
        def get_output_sign(cls):
            return {"y": int}

        def execute(self, op_in):
            return OPIO({"y": "not an int", "extra": 1})

    wf = Workflow("sig")
    wf.add(Step("wrong", Wrong, parameters={"x": 1}))
    (rec,) = wf.run().records
    assert rec.phase == "Failed"
    assert "output 'extra' is not declared" in rec.error
    assert "output parameter 'y' expects int, got str" in rec.error


def test_arun_inside_a_running_loop_and_events() -> None:
    @op
    async def sleepy(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    events: list[tuple[str, str]] = []
    wf = Workflow("async")
    a = Step("a", sleepy, parameters={"x": 1})
    wf.add(a)
    wf.add(Step("b", ident, parameters={"x": a.outputs.parameters["result"]}))

    async def main() -> str:
        result = await wf.arun(on_event=lambda kind, rec, f: events.append((kind, rec.name)))
        return result.status

    assert asyncio.run(main()) == "Succeeded"
    assert events == [("started", "a"), ("succeeded", "a"), ("started", "b"), ("succeeded", "b")]


def test_run_inside_a_running_loop_says_to_await_arun() -> None:
    wf = Workflow("in-loop")
    wf.add(Step("a", ident, parameters={"x": 1}))

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"await wf\.arun\(\.\.\.\)"):
            wf.run()

    asyncio.run(main())
    assert wf.run().status == "Succeeded"  # outside a loop, as ever


def test_async_fan_out_runs_concurrently() -> None:
    @op
    async def nap(x: int) -> int:
        await asyncio.sleep(0.2)
        return x

    wf = Workflow("naps")
    wf.add(
        Step(
            "nap",
            nap,
            parameters={"x": list(range(200))},
            slices=Slices(input_parameter=["x"], output_parameter=["result"]),
        )
    )
    started = time.monotonic()
    result = wf.run()
    elapsed = time.monotonic() - started
    assert result.records[0].outputs.parameters["result"] == list(range(200))
    # serial execution would take 40 s; this only guards against it, it is no benchmark
    assert elapsed < 20


_flavour: contextvars.ContextVar[str] = contextvars.ContextVar("flavour", default="plain")


def test_async_ops_keep_one_task_and_their_context_across_awaits() -> None:
    """Async OPs start without a task of their own until they suspend (the launcher): an OP
    must still see one task for its whole life, anyio scopes that span awaits must work,
    and context variables it sets must not leak into other OPs."""

    @op
    async def sometimes_waits(x: int) -> {"leaked": str, "mine": bool, "same": bool}:
        leaked = _flavour.get()
        _flavour.set(f"set-by-{x}")
        first = asyncio.current_task()
        if x % 2:  # odd slices suspend, even ones return at once
            with anyio.fail_after(30):
                await anyio.sleep(0.01)
                await asyncio.sleep(0)
            with anyio.move_on_after(0.01) as scope:
                await anyio.sleep(5)
            assert scope.cancelled_caught
        same_task = asyncio.current_task() is first and first is not None
        return {"leaked": leaked, "mine": _flavour.get() == f"set-by-{x}", "same": same_task}

    wf = Workflow("eager")
    fan = Step(
        "fan",
        sometimes_waits,
        parameters={"x": list(range(40))},
        slices=Slices(input_parameter=["x"], output_parameter=["leaked", "mine", "same"]),
    )
    wf.add(fan)
    result = wf.run()
    assert result.status == "Succeeded", result.records[0].errors
    out = result.records[0].outputs.parameters
    assert out["leaked"] == ["plain"] * 40
    assert out["mine"] == [True] * 40
    assert out["same"] == [True] * 40


def test_cancelling_a_run_reaches_async_ops_suspended_after_an_eager_start() -> None:
    cleaned: list[int] = []

    @op
    async def waits(x: int) -> int:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append(x)
        return x

    wf = Workflow("eager-cancel")
    wf.add(
        Step(
            "w",
            waits,
            parameters={"x": list(range(5))},
            slices=Slices(input_parameter=["x"], output_parameter=["result"]),
        )
    )

    async def main() -> bool:
        with anyio.move_on_after(0.3) as scope:
            await wf.arun()
        return scope.cancelled_caught

    assert anyio.run(main) is True
    assert sorted(cleaned) == list(range(5))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_sys_exit_in_an_op_fails_that_step_only(kind: str) -> None:
    def body() -> int:
        sys.exit(3)

    @op
    async def quits_async() -> int:
        return body()

    @op
    def quits_sync() -> int:
        return body()

    wf = Workflow(f"exit-{kind}")
    wf.add(
        [
            Step("quits", quits_async if kind == "async" else quits_sync),
            Step("fine", ident, parameters={"x": 1}),
        ]
    )
    result = wf.run()
    assert result.status == "Failed"
    (quits,) = result.query_step("quits")
    assert quits.phase == "Failed" and "SystemExit" in (quits.error or "")
    assert result.query_step("fine")[0].phase == "Succeeded"


def test_an_async_op_raising_base_exception_ends_the_run_with_it() -> None:
    class Boom(BaseException):
        pass

    @op
    async def boom() -> int:
        raise Boom("out")

    wf = Workflow("eager-boom")
    wf.add(Step("b", boom))
    with pytest.raises(BaseExceptionGroup) as info:
        wf.run()
    assert info.group_contains(Boom)


def test_ctrl_c_cancels_the_run_and_kills_worker_processes(tmp_path: Path) -> None:
    script = tmp_path / "hang_wf.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from dflow_async import Step, Workflow
            from dflow_async.testing._ops import hang
            wf = Workflow("ctrl-c", executor="process")
            params = {{"marker_dir": {str(tmp_path)!r}, "seconds": 60}}
            wf.add([Step(f"h{{i}}", hang, parameters=params)
                    for i in range(2)])
            if __name__ == "__main__":
                wf.run()
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stderr=err)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("pid-*"))) < 2:
        assert time.monotonic() < deadline, "the OPs never started"
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    # one line that says what happened and how to go on, not asyncio's CancelledError chain
    said = log.read_text()
    assert "KeyboardInterrupt: run ctrl-c-" in said and "wf.run(resume='ctrl-c-" in said, said
    assert "CancelledError" not in said, said
    pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("pid-*")]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]


def test_a_second_ctrl_c_kills_the_workers_without_their_grace(tmp_path: Path) -> None:
    """A second Ctrl-C while a cancelled run waits for its workers to stop kills them now.
    asyncio's own second Ctrl-C raised KeyboardInterrupt wherever the loop was, and its
    cleanup then waited for the whole kill grace (and sometimes forever: the interrupt lost
    a task's wake-up)."""
    script = tmp_path / "stubborn_wf.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, time
            from pathlib import Path
            from dflow_async import Step, Workflow, op
            from dflow_async.executors._process import ProcessExecutor

            HERE = Path({str(tmp_path)!r})

            @op
            def stubborn() -> int:
                def termed(*_):
                    (HERE / "termed").write_text("yes")
                signal.signal(signal.SIGTERM, termed)
                (HERE / f"pid-{{os.getpid()}}").write_text("")
                while True:
                    time.sleep(0.05)

            wf = Workflow("twice")
            wf.add(Step("s", stubborn))
            if __name__ == "__main__":
                wf.run(executor=ProcessExecutor(max_workers=1, kill_grace=3600))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stderr=err)
    try:
        for marker, then in (("pid-*", "the OP never started"), ("termed", "no SIGTERM")):
            deadline = time.monotonic() + 60
            while not list(tmp_path.glob(marker)):
                assert time.monotonic() < deadline, then
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)  # the second waits for the workers' SIGTERM
        proc.wait(timeout=60)  # (it waited out the hour's grace)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = log.read_text()
    assert "KeyboardInterrupt: run twice-" in said and "wf.run(resume='twice-" in said, said
    (pid,) = [int(p.name.split("-")[1]) for p in tmp_path.glob("pid-*")]
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_anyio_cancellation_of_arun_propagates() -> None:
    @op
    async def forever() -> int:
        await asyncio.sleep(3600)
        return 0

    wf = Workflow("forever")
    wf.add(Step("f", forever))

    async def main() -> bool:
        with anyio.move_on_after(0.2) as scope:
            await wf.arun()
        return scope.cancelled_caught

    assert anyio.run(main) is True


def test_a_run_does_not_wait_for_the_applications_thread_tokens(tmp_path: Path) -> None:
    """An application embedding a run (Starlette/FastAPI run sync endpoints through anyio's
    default thread limiter) may have every token of that limiter in use: a run's own thread
    work (journal writes, artifact fetches and commits, the step cache, the last journal write
    of a cancelled run) has tokens of its own, and neither waits for the application's."""
    import threading

    @op
    async def write(n: int) -> {"f": Artifact(Path)}:  # type: ignore[valid-type]
        out = current_context().workdir / "n.txt"
        out.write_text(str(n))
        return {"f": out}

    @op
    async def read(f: Artifact(Path)) -> int:  # type: ignore[valid-type]
        return int(f.read_text()) + 1

    @op
    async def inc(x: int) -> int:
        return x + 1

    wf = Workflow("own-threads", store=str(tmp_path / "store"))
    w = Step("write", write, parameters={"n": 1})
    r = Step("read", read, artifacts={"f": w.outputs.artifacts["f"]})
    c = Step("cached", inc, parameters={"x": r.outputs.parameters["result"]}, cache=True)
    for step in (w, r, c):
        wf.add(step)

    started = anyio.Event()

    @op
    async def waits() -> int:
        started.set()
        await anyio.sleep_forever()
        return 0

    cancelled = Workflow("own-threads-cancel", store=str(tmp_path / "store"))
    cancelled.add(Step("waits", waits))

    outcome: dict[str, typing.Any] = {}

    async def main() -> None:
        app = anyio.to_thread.current_default_thread_limiter()  # this loop's
        app.total_tokens = 1
        holding, release = threading.Event(), threading.Event()

        def request() -> None:  # the application's blocking call, holding the one token
            holding.set()
            release.wait()

        finished, ended = anyio.Event(), anyio.Event()
        scope = anyio.CancelScope()

        async def first() -> None:
            outcome["result"] = await wf.arun()
            finished.set()

        async def second() -> None:
            with scope:
                await cancelled.arun()
            outcome["cancelled"] = scope.cancelled_caught
            ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, request)
            try:
                # Runs go in tasks of their own: a run that waited for the token would, once
                # cancelled by the timeout, wait for it again in its (shielded) last journal
                # write, which only the release below ends.
                with anyio.fail_after(60):  # only against a hang
                    while not holding.is_set():
                        await anyio.sleep(0.001)
                    tg.start_soon(first)
                    await finished.wait()
                    tg.start_soon(second)
                    await started.wait()
                    scope.cancel()
                    await ended.wait()
                outcome["held"] = app.borrowed_tokens == 1 and not release.is_set()
            finally:
                release.set()

    anyio.run(main)
    result = outcome["result"]
    assert result.status == "Succeeded", [(s.name, s.error) for s in result.records]
    assert result.query_step("cached")[0].outputs.parameters["result"] == 3
    assert outcome["cancelled"] is True
    assert outcome["held"] is True  # all of it while the application held its token


def test_structured_events_are_quiet_by_default_and_logged_when_asked() -> None:
    import io
    import logging

    from dflow_async import configure_logging

    wf = Workflow("logged")
    wf.add(Step("a", ident, parameters={"x": 1}, key="the-a"))
    logger = logging.getLogger("dflow_async")
    assert not logger.isEnabledFor(logging.INFO)  # a library prints nothing on its own
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        result = wf.run()
    finally:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    text = stream.getvalue()
    assert "event='step_started'" in text and "event='step_succeeded'" in text
    assert f"run_id='{result.run_id}'" in text and "step='a'" in text and "key='the-a'" in text
    assert "duration=" in text
    # one attempt: the same attempt index in every event about it
    assert text.count("attempt=0") == 2 and "attempt=1" not in text, text


def test_optional_artifact_input_defaults_to_none() -> None:
    @op
    def maybe(f: Artifact(Path, optional=True)) -> bool:  # type: ignore[valid-type]
        return f is None

    wf = Workflow("optional")
    wf.add(Step("maybe", maybe))
    assert wf.run().records[0].outputs.parameters["result"] is True


def test_a_failing_event_hook_does_not_fail_the_run(caplog: pytest.LogCaptureFixture) -> None:
    def broken(kind: str, record: object, fields: dict) -> None:
        raise RuntimeError("progress bar exploded")

    wf = Workflow("hooked")
    wf.add(Step("a", ident, parameters={"x": 1}))
    wf.add(Step("b", ident, parameters={"x": 2}))
    with (
        caplog.at_level("ERROR", logger="dflow_async"),
        pytest.warns(RuntimeWarning, match="hook .*broken.* raised RuntimeError") as warned,
    ):
        result = wf.run(on_event=broken)
    assert result.status == "Succeeded"
    assert len(caplog.records) == 4  # started and succeeded, twice: each logged
    # seen once by default (the logger is silent unless configured), not once per event
    assert len([w for w in warned if "broken" in str(w.message)]) == 1


def test_hooks_that_could_never_work_are_refused_before_the_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)

    async def awaited(kind: str, record: object, fields: dict) -> None:
        pass

    class Meter:
        async def __call__(self, kind: str, record: object, fields: dict) -> None:
            pass

    wf = Workflow("hooked")
    wf.add(Step("a", ident, parameters={"x": 1}))
    for hook, message in [
        (awaited, "is an async function"),
        (Meter(), "is an async function"),
        (lambda event: None, r"must take \(kind, record, fields\)"),
        ("print", "takes callables"),
    ]:
        with pytest.raises(TypeError, match=message):
            wf.run(on_event=[hook])
    assert not (tmp_path / ".dflow-async" / "runs").exists()  # refused before any run began


def test_reuse_step_takes_records_only(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    wf = Workflow("reusing")
    wf.add(Step("a", ident, parameters={"x": 1}, key="a"))
    with pytest.raises(TypeError, match=r"reuse_step= takes step records .* got str 'oops'"):
        wf.run(reuse_step=["oops"])  # type: ignore[list-item]


def test_an_error_before_the_first_step_lets_the_run_go(tmp_path, monkeypatch) -> None:
    """Whatever fails once the journal is open (here: the warning about an edited OP, raised
    as an error under -W error), the run's journal and lock are let go: the next resume in the
    same process used to fail with RunBusyError naming this very process."""
    import warnings

    from dflow_async import EditedOpWarning, Run

    monkeypatch.chdir(tmp_path)
    fds = len(os.listdir("/proc/self/fd"))

    def build(body: typing.Any) -> Workflow:
        wf = Workflow("leaky")
        wf.add(Step("a", op(body), parameters={"x": 1}))
        return wf

    def first(x: int) -> int:
        raise FatalError("first version fails")

    def second(x: int) -> int:
        return x

    second.__qualname__ = first.__qualname__  # the same OP, edited
    second.__name__ = first.__name__
    assert build(first).run(run_id="leaky-1").status == "Failed"
    with warnings.catch_warnings():
        warnings.simplefilter("error", EditedOpWarning)
        with pytest.raises(EditedOpWarning):
            build(second).run(resume="leaky-1")
    with pytest.warns(EditedOpWarning):
        assert build(second).run(resume="leaky-1").status == "Succeeded"
    assert Run.open("leaky-1").status == "Succeeded"
    assert len(os.listdir("/proc/self/fd")) == fds


def test_arun_under_trio_says_it_needs_asyncio(tmp_path, monkeypatch) -> None:
    pytest.importorskip("trio")
    monkeypatch.chdir(tmp_path)
    wf = Workflow("trio")
    wf.add(Step("a", ident, parameters={"x": 1}))
    with pytest.raises(RuntimeError, match="needs an asyncio event loop"):
        anyio.run(wf.arun, backend="trio")
    assert not (tmp_path / ".dflow-async").exists()


@op
def chatty(x: int) -> int:
    print(f"python says {x}")
    subprocess.run(["echo", f"child says {x}"], check=True)
    return x


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_every_attempts_output_is_captured_to_its_log(executor: str) -> None:
    wf = Workflow("chatty")
    wf.add(Step("talk", chatty, parameters={"x": 7}))
    (rec,) = wf.run(executor=executor).records
    logs = "".join(Path(w + ".log").read_text() for w in rec.workdirs)
    assert "python says 7" in logs
    if executor == "process":  # file descriptors are redirected: child programs too
        assert "child says 7" in logs


def test_template_output_with_only_a_default() -> None:
    inner = Steps("inner")
    inner.add(Step("a", ident, parameters={"x": 1}))
    inner.outputs.parameters["fixed"] = OutputParameter(default=42)
    wf = Workflow("outer")
    call = Step("call", inner)
    wf.add(call)
    wf.add(Step("use", ident, parameters={"x": call.outputs.parameters["fixed"]}))
    assert wf.run().query_step(name="use")[0].outputs.parameters["result"] == 42


class Sized(typing.Protocol):  # not @runtime_checkable: isinstance refuses it
    def size(self) -> int: ...


class Box:
    def __init__(self, n: int) -> None:
        self.n = n

    def size(self) -> int:
        return self.n


@op
def make_sized(n: int) -> Sized:
    return Box(n)


@op
def total_size(one: Sized, many: list[Sized], maybe: Sized | None = None) -> int:
    return one.size() + sum(b.size() for b in many) + (maybe.size() if maybe else 0)


def test_protocol_typed_ports_run() -> None:
    # a Protocol annotation cannot be checked on a value at run time (structural): values
    # pass, in validation (is_compatible) and in the run-time check of inputs and outputs
    dag = DAG("d")
    made = Step("made", make_sized, parameters={"n": 3})
    use = Step(
        "use",
        total_size,
        parameters={
            "one": made.outputs.parameters["result"],
            "many": [Box(1), made.outputs.parameters["result"]],
            "maybe": Box(10),
        },
    )
    dag.add([use, made])
    result = Workflow("proto", dag=dag, executor="inline").run()
    assert result.status == "Succeeded"
    assert result.query_step(name="use")[0].outputs.parameters["result"] == 17


def test_a_workflow_survives_pickling_and_runs() -> None:
    """Templates keep their input tables' binding through pickle (sending a workflow to
    another process): pickle's default set the items before the attributes they need."""
    import cloudpickle

    loop = Steps("loop", inputs={"i": 0})
    loop.add(Step("a", ident, parameters={"x": loop.inputs.parameters["i"]}))
    copy = cloudpickle.loads(cloudpickle.dumps(Workflow("pickled", steps=loop)))
    assert copy.entrypoint.inputs.parameters["i"]._template is copy.entrypoint
    (rec,) = copy.run(parameters={"i": 3}).query_step(name="a")
    assert rec.outputs.parameters["result"] == 3


def test_a_deep_recursion_loop_writes_files_past_the_path_length_limit() -> None:
    """Each iteration of a recursion loop nests a level under <run>/steps/: 120 levels of a
    40-character name make a path longer than PATH_MAX (4096 bytes). Deep steps get a
    shortened directory (outer levels, a digest, their name) and still write their files."""

    @op
    def count(i: int) -> {"i": int, "log": Artifact(Path)}:  # type: ignore[valid-type]
        Path("log.txt").write_text(str(i))
        return {"i": i + 1, "log": Path("log.txt")}

    loop = Steps("loop", inputs={"i": 0, "limit": 120})
    step = Step("count", count, parameters={"i": loop.inputs.parameters["i"]})
    loop.add(step)
    name = "the-next-iteration-of-the-counting-loop"
    loop.add(
        Step(
            name,
            loop,
            parameters={
                "i": step.outputs.parameters["i"],
                "limit": loop.inputs.parameters["limit"],
            },
            when=step.outputs.parameters["i"] < loop.inputs.parameters["limit"],
        )
    )
    result = Workflow("deep", steps=loop).run()
    assert result.status == "Succeeded"
    counts = result.query_step(name="count")
    assert len(counts) == 120
    last = max(counts, key=lambda r: len(r.path))
    assert len(last.path) > 4096
    assert "/~" in last.workdirs[0] and len(last.workdirs[0]) < 1200
    assert last.outputs.artifacts["log"].read_text() == "119"


def test_events_carry_their_own_phase_and_attempt_and_each_retry_starts() -> None:
    """Hooks run on the loop, in order, possibly after the worker thread has moved the live
    record on: each event's fields say the phase and attempt it reports. A retry's attempt
    has its own started event."""

    @op
    def flaky() -> int:
        if current_context().attempt == 0:
            raise TransientError("first try")
        return 1

    seen: list[tuple[str, str, str, int]] = []
    wf = Workflow("events")
    wf.add(Step("plain", ident, parameters={"x": 1}))
    wf.add(Step("flaky", flaky, retries=RetryPolicy(max_retries=1, backoff=0, jitter=0)))
    wf.run(on_event=lambda kind, rec, f: seen.append((rec.name, kind, f["phase"], f["attempt"])))
    assert seen == [
        ("plain", "started", "Running", 0),
        ("plain", "succeeded", "Succeeded", 0),
        ("flaky", "started", "Running", 0),
        ("flaky", "retrying", "Running", 0),
        ("flaky", "started", "Running", 1),
        ("flaky", "succeeded", "Succeeded", 1),
    ]


def test_an_op_changing_its_input_in_place_changes_nothing_else() -> None:
    """In this process an OP's input list is another step's recorded output (or the
    workflow's literal): an OP that appends to it, or clears it and fails, must change
    neither, nor what a retry sees."""
    from dflow_async import Run

    @op
    def make() -> list[int]:
        return [0, 1, 2]

    @op
    def grab(xs: list[int]) -> int:
        xs.append(999)
        return len(xs)

    @op
    def wipe(xs: list[int]) -> int:
        xs.clear()
        raise TransientError(f"saw {len(xs)} after clearing")

    @op
    async def first_to_minus_one(xs: list[int]) -> int:
        xs[0] = -1
        return xs[0]

    literal = [5, 6]
    wf = Workflow("in-place")
    mk = Step("make", make)
    wf.add(mk)
    out = mk.outputs.parameters["result"]
    wf.add(
        [
            Step("grab", grab, parameters={"xs": out}),
            Step(
                "wipe",
                wipe,
                parameters={"xs": out},
                retries=RetryPolicy(max_retries=2, backoff=0, jitter=0),
            ),
            Step("literal", grab, parameters={"xs": literal}),
            Step("again", first_to_minus_one, parameters={"xs": out}),
        ]
    )
    result = wf.run()
    assert result.query_step(name="grab")[0].outputs.parameters["result"] == 4
    (wiped,) = result.query_step(name="wipe")
    assert wiped.attempts == 3 and all("after clearing" in e for e in wiped.errors)
    assert result.query_step(name="make")[0].outputs.parameters["result"] == [0, 1, 2]
    assert Run.open(result.run_id).query_step(name="make")[0].outputs.parameters["result"] == [
        0,
        1,
        2,
    ]
    assert literal == [5, 6]


def test_a_recursion_that_never_ends_fails_at_the_nesting_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A when= that never turns false used to grow memory and disk until the process died."""
    import dflow_async._state

    monkeypatch.setattr(dflow_async._state, "MAX_NESTING", 30)

    @op
    def step(i: int) -> int:
        return i + 1

    loop = Steps("forever", inputs={"i": 0})
    s = Step("step", step, parameters={"i": loop.inputs.parameters["i"]})
    loop.add(s)
    loop.add(
        Step(
            "again",
            loop,
            parameters={"i": s.outputs.parameters["result"]},
            when=s.outputs.parameters["result"] > 0,
        )
    )
    result = Workflow("forever", steps=loop).run()
    assert result.status == "Failed"
    assert len(result.query_step(name="step")) == 31
    deepest = max(result.query_step(name="again"), key=lambda r: len(r.path))
    assert "would run 31 levels deep: a recursion whose when= never turns false?" in (
        deepest.error or ""
    )


@pytest.mark.parametrize("journal", [True, False])
def test_a_fan_out_reports_its_progress_by_unit(journal: bool) -> None:
    """A fan-out is one step: its attempts' unit_done events tell a progress display how far
    along its slices are (and the journal writes no event row for them)."""
    seen: list[tuple[str, int, int]] = []

    def hook(kind: str, record: typing.Any, fields: dict) -> None:
        if kind == "unit_done":
            seen.append((record.name, fields["slices"], fields["of"]))

    wf = Workflow("progress")
    wf.add(
        Step(
            "sq",
            ident,
            parameters={"x": list(range(7))},
            slices=Slices(input_parameter=["x"], output_parameter=["result"], group_size=3),
        )
    )
    assert wf.run(on_event=hook, journal=journal).status == "Succeeded"
    assert sorted(seen) == [("sq", 1, 7), ("sq", 3, 7), ("sq", 3, 7)]


def test_a_when_callable_that_raises_fails_its_step_naming_the_condition() -> None:
    # the step's error read "ZeroDivisionError: division by zero", as if its OP had raised
    def ratio_ok(inputs: dict[str, int]) -> bool:
        return 1 / inputs["x"] > 0.5

    wf = Workflow("cond")
    wf.add(Step("guarded", ident, parameters={"x": 0}, when=ratio_ok))
    result = wf.run(journal=False)
    assert result.status == "Failed"
    (rec,) = result.query_step(name="guarded")
    assert rec.errors == [
        "ConditionError: the when= condition test_a_when_callable_that_raises_fails_its_step_"
        "naming_the_condition.<locals>.ratio_ok raised ZeroDivisionError: division by zero"
    ]
    assert rec.attempts == 0  # the OP never ran
