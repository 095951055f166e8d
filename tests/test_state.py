"""The sans-IO state machine, driven directly: events in, instructions out."""

from __future__ import annotations

from dflow_async import DAG, RetryPolicy, Slices, Step, Workflow, op
from dflow_async._spec import Failed, Succeeded
from dflow_async._state import Finish, Retry, RunState, Unit


@op
def ident(x: int = 0) -> int:
    return x


def make_state(wf: Workflow, parallelism: int | None = None) -> RunState:
    return RunState(wf.validate(), run_id="r", run_dir="/tmp/r", parallelism=parallelism)


def launches(instructions: list) -> list:
    return [i for i in instructions if isinstance(i, Unit)]


def ok(unit, value=None) -> Succeeded:
    outs = tuple(
        {"result": unit.spec.slices[k].inputs.get("x") if value is None else value}
        for k in range(len(unit.spec.slices))
    )
    return Succeeded(outputs=outs)


def test_chain_launches_one_step_after_the_other() -> None:
    dag = DAG("d")
    a = Step("a", ident, parameters={"x": 1})
    b = Step("b", ident, parameters={"x": a.outputs.parameters["result"]})
    dag.add([b, a])
    state = make_state(Workflow("w", dag=dag))
    (ua,) = launches(state.start())
    assert ua.spec.step == "a"
    (ub,) = launches(state.unit_finished(ua, ok(ua)))
    assert ub.spec.step == "b"
    assert ub.spec.slices[0].inputs == {"x": 1}
    done = state.unit_finished(ub, ok(ub))
    assert done == [Finish("Succeeded")]
    assert [r.phase for r in state.records] == ["Succeeded", "Succeeded"]


def test_parallelism_caps_running_attempts() -> None:
    wf = Workflow("w", parallelism=2)
    wf.add([Step(f"s{i}", ident, parameters={"x": i}) for i in range(5)])
    state = make_state(wf, parallelism=2)
    running = launches(state.start())
    assert len(running) == 2
    seen = 2
    while running:
        unit = running.pop(0)
        new = launches(state.unit_finished(unit, ok(unit)))
        assert state.running <= 2
        seen += len(new)
        running += new
    assert seen == 5
    assert state.status == "Succeeded"


def test_slices_group_and_pool_size() -> None:
    wf = Workflow("w")
    fan = Step(
        "fan",
        ident,
        parameters={"x": list(range(10))},
        slices=Slices(
            input_parameter=["x"], output_parameter=["result"], group_size=3, pool_size=2
        ),
    )
    wf.add(fan)
    state = make_state(wf)
    units = launches(state.start())
    assert len(units) == 2  # pool_size
    assert [len(u.spec.slices) for u in units] == [3, 3]
    collected = []
    while units:
        u = units.pop(0)
        collected.append([s.index for s in u.spec.slices])
        units += launches(state.unit_finished(u, ok(u)))
    assert collected == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert state.records[0].outputs.parameters["result"] == list(range(10))


def test_transient_failure_is_retried_with_backoff() -> None:
    wf = Workflow("w")
    wf.add(Step("a", ident, parameters={"x": 1}, retries=RetryPolicy(max_retries=2, backoff=1.0)))
    state = make_state(wf)
    (u,) = launches(state.start())
    out = state.unit_finished(u, Failed(kind="transient", error="flaky", retryable=True))
    (retry,) = out
    assert isinstance(retry, Retry) and retry.delay >= 1.0 and retry.unit.attempt == 1
    (u2,) = launches(state.retry_due(retry.unit))
    assert u2.attempt == 1 and u2.spec.slices[0].workdir.endswith("/a1")
    assert state.unit_finished(u2, ok(u2)) == [Finish("Succeeded")]
    assert state.records[0].attempts == 2


def test_user_error_is_not_retried_and_stops_new_work_but_not_running_work() -> None:
    wf = Workflow("w")
    wf.add(
        [
            Step("bad", ident, parameters={"x": 1}, retries=3),
            Step("slow", ident, parameters={"x": 2}),
        ]
    )
    wf.add(Step("later", ident, parameters={"x": 3}))
    state = make_state(wf)
    bad, slow = launches(state.start())
    out = state.unit_finished(bad, Failed(kind="user", error="ValueError: no"))
    assert out == []  # no retry, nothing new; "slow" is still running
    out = state.unit_finished(slow, ok(slow))
    assert out == [Finish("Failed")]
    phases = {r.name: r.phase for r in state.records}
    assert phases == {"bad": "Failed", "slow": "Succeeded"}  # "later" never started


def test_skipped_producer_skips_consumer_without_default() -> None:
    wf = Workflow("w")
    a = Step("a", ident, parameters={"x": 1}, when=False)
    wf.add(a)
    wf.add(Step("b", ident, parameters={"x": a.outputs.parameters["result"]}))
    state = make_state(wf)
    assert state.start() == [Finish("Succeeded")]
    assert [r.phase for r in state.records] == ["Skipped", "Skipped"]


def test_fan_out_tolerates_failures_by_ratio() -> None:
    wf = Workflow("w")
    wf.add(
        Step(
            "fan",
            ident,
            parameters={"x": [0, 1, 2, 3]},
            slices=Slices(input_parameter=["x"], output_parameter=["result"]),
            continue_on_success_ratio=0.75,
        )
    )
    state = make_state(wf)
    units = launches(state.start())
    out = []
    for u in units:
        if u.spec.slices[0].index == 2:
            out += state.unit_finished(u, Failed(kind="user", error="diverged"))
        else:
            out += state.unit_finished(u, ok(u))
    assert Finish("Succeeded") in out
    rec = state.records[0]
    assert rec.outputs.parameters["result"] == [0, 1, None, 3]
    assert rec.failed_slices == 1


def test_a_retry_waits_for_its_steps_pool_size() -> None:
    """While a failed unit waits out its retry delay, its pool slot goes to the step's next
    unit: the retry, once due, waits for a slot instead of running a third attempt at once."""
    wf = Workflow("w")
    fan = Step(
        "fan",
        ident,
        parameters={"x": list(range(4))},
        slices=Slices(input_parameter=["x"], output_parameter=["result"], pool_size=2),
        retries=RetryPolicy(max_retries=1, backoff=1.0),
    )
    wf.add(fan)
    state = make_state(wf)
    u0, u1 = launches(state.start())
    out = state.unit_finished(u0, Failed(kind="transient", error="flaky", retryable=True))
    (retry,) = [i for i in out if isinstance(i, Retry)]
    (u2,) = launches(out)  # the free slot went to the next unit
    assert [s.index for s in u2.spec.slices] == [2]
    assert launches(state.retry_due(retry.unit)) == []  # u1 and u2 hold the pool
    (again,) = launches(state.unit_finished(u1, ok(u1)))
    assert again is retry.unit  # the retry goes before the step's last unit
    running = [u2, again]
    while running:
        u = running.pop(0)
        new = launches(state.unit_finished(u, ok(u)))
        assert len(running) + len(new) <= 2
        running += new
    assert state.status == "Succeeded"
    assert state.records[0].outputs.parameters["result"] == [0, 1, 2, 3]
