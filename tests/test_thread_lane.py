"""Plain OPs on the inline executor advance the run from the worker thread that ran them
(no trip through the event loop per step). What users see must not change: hooks on the
loop and in order, long steps still run side by side, other executors and async OPs still
get their steps, failures and cancellation still stop the run."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import anyio
import pytest

from dflow_async import DAG, Run, Slices, Step, Steps, TransientError, Workflow, op


@pytest.fixture(autouse=True)
def _tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@op
def plus1(x: int = 0) -> int:
    return x + 1


def chain(name: str, n: int, template: object = plus1) -> Workflow:
    """Steps s0..s<n-1>, each given the previous one's result (s0 gets 0)."""
    steps = Steps(name)
    prev = None
    for i in range(n):
        x = prev.outputs.parameters["result"] if prev is not None else 0
        prev = Step(f"s{i}", template, parameters={"x": x})
        steps.add(prev)
    return Workflow(name, steps=steps)


@pytest.mark.parametrize("journal", [False, True])
def test_event_hooks_run_on_the_event_loop_in_order(journal: bool) -> None:
    wf = chain("hooks", 30)
    seen: list[tuple[str, str]] = []
    threads: set[int] = set()

    async def main() -> str:
        loop_thread = threading.get_ident()

        def hook(kind: str, record: object, fields: dict) -> None:
            threads.add(threading.get_ident())
            seen.append((kind, record.name))  # type: ignore[attr-defined]

        result = await wf.arun(on_event=hook, journal=journal)
        assert threads == {loop_thread}
        return result.status

    assert asyncio.run(main()) == "Succeeded"
    expected = [(kind, f"s{i}") for i in range(30) for kind in ("started", "succeeded")]
    assert seen == expected


def test_chain_of_plain_steps_gives_every_value_with_the_journal_on() -> None:
    wf = chain("journaled", 200)
    result = wf.run()
    assert result.status == "Succeeded"
    assert result.query_step(name="s199")[0].outputs.parameters["result"] == 200
    # the journal (written as the run went, from worker threads too) tells the same story
    reloaded = Run.open(result.run_id)
    assert reloaded.status == "Succeeded"
    assert reloaded.query_step(name="s199")[0].outputs.parameters["result"] == 200
    assert len(reloaded.records) == 200


def test_long_plain_steps_released_by_a_plain_step_still_run_side_by_side(
    tmp_path: Path,
) -> None:
    @op
    def nap(x: int, log: str) -> int:
        start = time.time()
        time.sleep(1.0)
        with open(log, "a") as f:
            f.write(f"{start} {time.time()}\n")
        return x

    log = str(tmp_path / "naps.log")
    dag = DAG("naps")
    first = Step("first", plus1, parameters={"x": 0})
    dag.add(first)
    for i in range(3):
        dag.add(
            Step(f"nap{i}", nap, parameters={"x": first.outputs.parameters["result"], "log": log})
        )
    assert Workflow("naps", dag=dag).run(journal=False).status == "Succeeded"
    spans = [tuple(map(float, line.split())) for line in Path(log).read_text().splitlines()]
    assert len(spans) == 3
    # all three were asleep at once: the last to start began before the first to end ended
    assert max(s for s, _ in spans) < min(e for _, e in spans)


def test_plain_steps_hand_over_to_async_ops_retries_and_other_executors() -> None:
    tries: list[int] = []

    @op
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @op
    def flaky(x: int) -> int:
        tries.append(x)
        if len(tries) == 1:
            raise TransientError("first try fails")
        return x + 10

    steps = Steps("mixed")
    a = Step("a", plus1, parameters={"x": 1})  # 2
    b = Step("b", double, parameters={"x": a.outputs.parameters["result"]})  # 4
    c = Step("c", plus1, parameters={"x": b.outputs.parameters["result"]})  # 5
    d = Step("d", flaky, parameters={"x": c.outputs.parameters["result"]}, retries=2)  # 15
    e = Step("e", plus1, parameters={"x": d.outputs.parameters["result"]}, executor="process")  # 16
    f = Step("f", plus1, parameters={"x": e.outputs.parameters["result"]})  # 17
    for s in (a, b, c, d, e, f):
        steps.add(s)
    result = Workflow("mixed", steps=steps).run(journal=False)
    assert result.status == "Succeeded"
    assert result.query_step(name="f")[0].outputs.parameters["result"] == 17
    assert result.query_step(name="d")[0].attempts == 2
    assert tries == [5, 5]


def test_a_failing_plain_step_stops_the_chain_after_it() -> None:
    ran: list[int] = []

    @op
    def step(x: int) -> int:
        ran.append(x)
        if x == 3:
            raise ValueError("three is bad")
        return x + 1

    result = chain("fails", 6, step).run(journal=False)
    assert result.status == "Failed"
    assert ran == [0, 1, 2, 3]
    assert [r.phase for r in result.records] == ["Succeeded"] * 3 + ["Failed"]
    assert "three is bad" in (result.query_step(name="s3")[0].error or "")


def test_cancelling_a_run_stops_a_chain_advancing_in_a_worker_thread() -> None:
    ran: list[int] = []

    @op
    def tick(x: int = 0) -> int:
        ran.append(x)
        time.sleep(0.01)
        return x + 1

    wf = chain("ticks", 500, tick)
    events: list[tuple[str, str]] = []

    async def main() -> bool:
        with anyio.move_on_after(0.3) as scope:
            await wf.arun(journal=False, on_event=lambda k, rec, f: events.append((k, rec.name)))
        return scope.cancelled_caught

    assert anyio.run(main) is True
    at_cancel = len(ran)
    time.sleep(0.3)
    assert 0 < at_cancel < 500
    # the attempt running when the run was cancelled may finish; nothing starts after it
    assert len(ran) <= at_cancel + 1
    # the hook heard the end of every step it heard start, the cancelled one included
    started = [name for kind, name in events if kind == "started"]
    ended = {name: kind for kind, name in events if kind in ("succeeded", "cancelled")}
    assert started and all(name in ended for name in started)
    assert ended[started[-1]] == "cancelled"


def test_a_chain_of_short_steps_does_not_starve_an_attempt_queued_before_it(
    tmp_path: Path,
) -> None:
    """A worker thread that finishes a step goes on with the steps it made ready; under a
    pool_size the slices of a fan-out are such a chain. An attempt already queued (here the
    sibling ``mark``, beside it under parallelism=2) waited for the whole chain: no thread
    was stuck long enough for the executor to add one."""
    marker = tmp_path / "marked"

    @op
    def tick(x: int) -> bool:
        return marker.exists()

    @op
    def mark() -> int:
        marker.write_text("yes")
        return 1

    wf = Workflow("fair", parallelism=2)
    fan = Step(
        "fan",
        tick,
        parameters={"x": list(range(200))},
        slices=Slices(input_parameter=["x"], output_parameter=["result"], pool_size=1),
    )
    wf.add([fan, Step("mark", mark)])
    result = wf.run(journal=False)
    assert result.status == "Succeeded"
    seen = result.query_step(name="fan")[0].outputs.parameters["result"]
    assert seen[-1], "mark ran only after the last slice"
