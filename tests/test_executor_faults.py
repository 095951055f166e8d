"""What the scheduler does with an executor that misbehaves: users run plugins the conformance
suite may not have caught, so a bad outcome, a failing start() or a failing stop() must end
up as a clear failure of the attempt or the run, never as an error from inside the state
machine, a step that "succeeded" without its outputs, or a lost result."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from dflow_async import (
    ExecutorStartError,
    Run,
    Slices,
    Step,
    Workflow,
    WorkflowValidationError,
    op,
)
from dflow_async.executors import InlineExecutor, ProcessExecutor, Succeeded


@op
def double(x: int) -> int:
    return 2 * x


@op
def total(xs: list[int]) -> int:
    return sum(xs)


class _ReturnsNone(ProcessExecutor):
    async def wait(self, handle):  # type: ignore[no-untyped-def]
        await super().wait(handle)


class _DropsOutputs(ProcessExecutor):
    async def wait(self, handle):  # type: ignore[no-untyped-def]
        outcome = await super().wait(handle)
        if isinstance(outcome, Succeeded):  # a transport that loses the values
            return Succeeded(tuple({} for _ in outcome.outputs), outcome.duration)
        return outcome


class _DropsSlices(ProcessExecutor):
    async def wait(self, handle):  # type: ignore[no-untyped-def]
        outcome = await super().wait(handle)
        if isinstance(outcome, Succeeded):  # only the first slice of a group comes back
            return Succeeded(outcome.outputs[:1], outcome.duration)
        return outcome


class _CannotStart(InlineExecutor):
    async def start(self) -> None:
        raise ConnectionError("scheduler at tcp://10.0.0.1:8786 is unreachable")


class _CannotStop(InlineExecutor):
    async def stop(self) -> None:
        await super().stop()
        raise RuntimeError("cluster shutdown timed out")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("executor", "problem"),
    [
        (_ReturnsNone, "returned None for attempt 'double#0@0': an outcome is a dflow_async "),
        (_DropsOutputs, "for attempt 'double#0@0': its outputs lack ['result']"),
        (_DropsSlices, "must be a tuple of one mapping per slice (3), got 1"),
    ],
)
def test_a_malformed_outcome_fails_the_attempt_as_infra(executor: type, problem: str) -> None:
    # before: None ended the run with an AttributeError from inside the state machine; a
    # dropped output or slice passed as a step that succeeded without them
    wf = Workflow("w", executor=executor(max_workers=1))
    d = Step(
        "double",
        double,
        parameters={"x": [1, 2, 3]},
        slices=Slices(input_parameter=["x"], output_parameter=["result"], group_size=3),
    )
    wf.add(d)
    wf.add(Step("total", total, parameters={"xs": d.outputs.parameters["result"]}))
    result = wf.run()
    assert result.status == "Failed"
    (rec,) = result.query_step(name="double")
    assert rec.phase == "Failed"
    (error,) = rec.errors
    assert error.startswith("attempt 0 (slices 0..): [infra] executor 'process' "), error
    assert problem in error, error
    assert not result.query_step(name="total")  # never started


def test_an_executor_that_cannot_start_ends_the_run_before_any_step_and_it_resumes() -> None:
    wf = Workflow("w", executor=_CannotStart())
    wf.add(Step("double", double, parameters={"x": 4}))
    with pytest.raises(ExecutorStartError) as info:
        wf.run(run_id="r1")
    assert str(info.value) == (
        "the 'inline' executor could not start (ConnectionError: scheduler at "
        "tcp://10.0.0.1:8786 is unreachable); no step of run r1 was started: fix it, then "
        "resume the run (wf.run(resume='r1') or `dflow-async resume r1`)"
    )
    assert isinstance(info.value.__cause__, ConnectionError)
    assert Run.open("r1").status == "Interrupted"
    # as it says: once the executor works, the run goes on (and is not busy)
    result = wf.run(resume="r1", executor="inline")
    assert result.status == "Succeeded"
    assert result.query_step(name="double")[0].outputs.parameters["result"] == 8


def test_an_executor_that_cannot_stop_warns_and_the_result_is_kept() -> None:
    # before: stop()'s exception came out of wf.run() and the result of a run the journal
    # records as Succeeded was lost
    wf = Workflow("w", executor=_CannotStop())
    wf.add(Step("double", double, parameters={"x": 4}))
    with pytest.warns(RuntimeWarning, match="'inline' executor failed to stop") as caught:
        result = wf.run()
    assert "RuntimeError: cluster shutdown timed out" in str(caught[0].message)
    assert result.status == "Succeeded"
    assert result.query_step(name="double")[0].outputs.parameters["result"] == 8
    assert Run.open(result.run_id).status == "Succeeded"


@op
async def gate(x: int) -> int:
    _entered.append(x)
    await _release[x].wait()  # each run waits to be let go: they finish in turn
    return x


_release: list[asyncio.Event] = []
_entered: list[int] = []


@pytest.mark.parametrize("kind", [InlineExecutor, ProcessExecutor])
def test_concurrent_runs_of_one_loop_share_an_executor_object(kind: type) -> None:
    # an application's concurrent arun() calls with one executor object: the first run to
    # finish closed it under the others, whose attempts then failed
    shared = kind(max_workers=2)

    def flow(n: int) -> Workflow:
        wf = Workflow(f"shared{n}", executor=shared)
        g = Step("gate", gate, parameters={"x": n}, executor="inline")
        wf.add(g)
        wf.add(Step("double", double, parameters={"x": g.outputs.parameters["result"]}))
        return wf

    async def main() -> list[Any]:
        _release[:] = [asyncio.Event() for _ in range(3)]
        _entered.clear()
        runs = [asyncio.create_task(flow(n).arun()) for n in range(3)]
        while len(_entered) < 3:  # each run is under way, inside its executors
            await asyncio.sleep(0.01)
        _release[0].set()
        first = await runs[0]
        assert shared._state == "open"  # the others still use it
        for event in _release[1:]:
            event.set()
        return [first, *[await r for r in runs[1:]]]

    results = asyncio.run(main())
    assert [r.status for r in results] == ["Succeeded"] * 3
    assert [r.query_step(name="double")[0].outputs.parameters["result"] for r in results] == [
        0,
        2,
        4,
    ]
    assert shared._state == "closed"  # by the last run out


def test_an_executor_object_in_use_by_another_loop_is_refused_before_the_run() -> None:
    shared = InlineExecutor()
    entered = threading.Event()
    leave = threading.Event()

    def other_loop() -> None:
        async def hold() -> None:
            async with shared:
                entered.set()
                await asyncio.to_thread(leave.wait)

        asyncio.run(hold())

    holder = threading.Thread(target=other_loop)
    holder.start()
    try:
        assert entered.wait(10)
        wf = Workflow("w", executor=shared)
        wf.add(Step("double", double, parameters={"x": 4}))
        with pytest.raises(WorkflowValidationError) as info:
            wf.run(run_id="r2")
        assert "the 'inline' executor object is in use by a run in another event loop" in str(
            info.value
        )
        assert not list(Path(".dflow-async").glob("runs/r2"))  # nothing was started
    finally:
        leave.set()
        holder.join()


def test_an_executor_object_whose_start_failed_may_serve_a_run_in_another_loop() -> None:
    # a failed start leaves it new (not in use), wherever that start was tried
    flaky = _StartsOnSecondTry()
    wf = Workflow("w", executor=flaky)
    wf.add(Step("double", double, parameters={"x": 4}))
    with pytest.raises(ExecutorStartError):
        wf.run(run_id="first")
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(wf.run(run_id="second")))
    t.start()
    t.join()
    assert box[0].status == "Succeeded"


class _StartsOnSecondTry(InlineExecutor):
    tries = 0

    async def start(self) -> None:
        type(self).tries += 1
        if self.tries == 1:
            raise ConnectionError("not yet")
        await super().start()
