"""The executor conformance suite: the same workflows, the same outcomes, on every executor."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from dflow_async._graph import DAG, RetryPolicy, Slices, Step
from dflow_async._spec import AttemptOutcome, AttemptSpec, Failed, outcome_problem
from dflow_async._workflow import Workflow
from dflow_async.exceptions import WorkflowValidationError
from dflow_async.executors._base import AttemptHandle, Executor
from dflow_async.testing import _ops


class ExecutorConformance:
    """Subclass as ``TestXxx`` and implement :meth:`make_executor`.

    Class flags describe what the executor can promise:
    ``isolates_processes`` — attempts run in separate processes: a worker killed mid-step is
    reported as an ``infra`` failure (and retried), a timed-out or cancelled attempt's process
    is killed, and OPs that cannot be pickled are refused before the run.
    ``deadline`` — seconds one workflow of the suite may take before the executor counts as
    hung (an attempt whose outcome ``wait`` never returns); raise it for backends that take
    long to start workers.
    """

    isolates_processes: bool = False
    deadline: float = 60.0

    def make_executor(self) -> Executor:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    @pytest.fixture(autouse=True)
    def _in_tmp(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        self.tmp = tmp_path

    def run(self, wf: Workflow, **kwargs: Any) -> Any:
        """``wf.run`` on a fresh executor, failing the test with what the executor did wrong
        when it returns malformed outcomes or never returns one, rather than with a KeyError
        on a missing output or a hang (which only a pytest-timeout plugin, when installed,
        would end)."""
        executor, watch = self._watched()

        async def main() -> Any:
            with anyio.move_on_after(self.deadline):
                return await wf.arun(executor=executor, **kwargs)
            return None

        try:
            result = anyio.run(main)
        except Exception:
            watch.check()  # the executor's fault, when it is, rather than its consequence
            raise
        watch.check()
        if result is None:
            waiting = sorted(watch.pending)
            pytest.fail(
                f"workflow {wf.name!r} did not finish within {self.deadline:g} s on the "
                f"{executor.name!r} executor"
                + (f"; wait() never returned the outcome of {waiting}" if waiting else "")
                + ". Every submitted attempt must come back from wait(), a worker that died as "
                "Failed(kind='infra'); raise `deadline` if the backend is only slow.",
                pytrace=False,
            )
        return result

    def _watched(self) -> tuple[Executor, _Watch]:
        """A fresh executor whose ``submit``/``wait`` are watched (their instance attributes
        shadow the class's methods, so ``Executor.run`` goes through them too)."""
        executor = self.make_executor()
        watch = _Watch()
        submit, wait = executor.submit, executor.wait

        async def watched_submit(spec: AttemptSpec) -> AttemptHandle:
            handle = await submit(spec)
            watch.pending.add(spec.attempt_id)
            return handle

        async def watched_wait(handle: AttemptHandle) -> AttemptOutcome:
            outcome = await wait(handle)
            watch.pending.discard(handle.spec.attempt_id)
            problem = outcome_problem(handle.spec, outcome)
            if problem is None:
                return outcome
            watch.problems.append(f"{executor.name!r}.wait() {problem}")
            # the scheduler gets a well-formed failure, so the run ends and the test says why
            return Failed(kind="infra", error=problem)

        executor.submit = watched_submit  # type: ignore[method-assign]
        executor.wait = watched_wait  # type: ignore[method-assign]
        return executor, watch

    # ------------------------------------------------------------------ the suite

    def test_happy_path_chain_and_fan_out(self) -> None:
        wf = Workflow("happy")
        a = Step("a", _ops.add, parameters={"x": 1, "y": 2})
        sq = Step(
            "sq",
            _ops.square,
            parameters={"x": [1, 2, 3, 4, 5]},
            slices=Slices(input_parameter=["x"], output_parameter=["result"], group_size=2),
        )
        scale = Step(
            "scale", _ops.Scale, parameters={"x": 1.5, "factor": a.outputs.parameters["result"]}
        )
        wf.add([a, sq])
        wf.add(scale)
        wf.add(Step("tot", _ops.total, parameters={"xs": sq.outputs.parameters["result"]}))
        result = self.run(wf)
        assert result.status == "Succeeded", [r.errors for r in result.records]
        assert result.query_step(name="a")[0].outputs.parameters["result"] == 3
        assert result.query_step(name="sq")[0].outputs.parameters["result"] == [1, 4, 9, 16, 25]
        assert result.query_step(name="scale")[0].outputs.parameters["y"] == 4.5
        assert result.query_step(name="tot")[0].outputs.parameters["result"] == 55

    def test_op_raising_fails_the_step_without_retry(self) -> None:
        wf = Workflow("raising")
        wf.add(Step("boom", _ops.fail_with_value_error, parameters={"x": 7}, retries=2))
        wf.add(Step("after", _ops.add, parameters={"x": 1}))
        result = self.run(wf)
        assert result.status == "Failed"
        (boom,) = result.query_step(name="boom")
        assert boom.phase == "Failed"
        assert boom.attempts == 1  # a plain exception is not retried by default
        assert "ValueError: bad input 7" in (boom.error or "")
        assert result.query_step(name="after") == []

    def test_artifact_round_trip(self) -> None:
        dag = DAG("artifacts")
        w = Step("write", _ops.write_tree, parameters={"n": 3})
        r = Step(
            "read",
            _ops.read_tree,
            artifacts={"tree": w.outputs.artifacts["tree"], "first": w.outputs.artifacts["first"]},
        )
        dag.add([r, w])
        result = self.run(Workflow("artifacts", dag=dag))
        assert result.status == "Succeeded", [x.errors for x in result.records]
        (read,) = result.query_step(name="read")
        assert read.outputs.parameters["lines"] == ["line 0", "line 1", "line 2", "first"]
        if self.isolates_processes:
            assert read.outputs.parameters["cwd_ok"] is True
        (write,) = result.query_step(name="write")
        tree = write.outputs.artifacts["tree"]
        assert Path(tree).is_dir() and Path(tree).is_absolute()
        assert sorted(p.name for p in (Path(tree) / "sub").iterdir()) == [
            "f0.txt",
            "f1.txt",
            "f2.txt",
        ]

    def test_worker_killed_mid_step_is_retried(self) -> None:
        if not self.isolates_processes:
            pytest.skip("attempts share the driver's process: killing one kills the run")
        wf = Workflow("killed")
        wf.add(
            Step(
                "die",
                _ops.die_once,
                parameters={"marker_dir": str(self.tmp)},
                retries=RetryPolicy(max_retries=2, backoff=0.0, jitter=0.0),
            )
        )
        result = self.run(wf)
        (die,) = result.query_step(name="die")
        assert result.status == "Succeeded", die.errors
        assert die.attempts == 2
        assert die.outputs.parameters["result"] == 1
        assert "[infra]" in die.errors[0]

    def test_timeout_stops_the_attempt(self) -> None:
        wf = Workflow("timeout")
        # long enough for a fresh worker process to start and record its pid, even on a busy
        # machine; the OP itself would hang past the deadline, so an executor that waits for it
        # instead of stopping it cannot pass
        parameters = {"marker_dir": str(self.tmp), "seconds": self.deadline + 30}
        wf.add(Step("hang", _ops.hang, parameters=parameters, timeout=3.0))
        try:
            result = self.run(wf)
            (hang,) = result.query_step(name="hang")
            assert result.status == "Failed"
            assert hang.phase == "Failed"
            assert "[timeout]" in (hang.error or "")
            if self.isolates_processes:  # before the release: a hung OP must not end by itself
                self._assert_hung_processes_gone()
        finally:
            (self.tmp / "release").write_text("")  # lets an unkillable thread end too

    def test_cancel_stops_running_attempts(self) -> None:
        wf = Workflow("cancel")
        parameters = {"marker_dir": str(self.tmp), "seconds": self.deadline + 30}
        wf.add(Step("hang", _ops.hang, parameters=parameters))
        started = []
        executor, watch = self._watched()

        async def main() -> None:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await wf.arun(executor=executor)

                tg.start_soon(run)
                # wait for the OP itself to have started (it writes a pid file), then cancel
                with anyio.fail_after(30):
                    while not list(self.tmp.glob("pid-*")):
                        await anyio.sleep(0.01)
                started.append(True)
                tg.cancel_scope.cancel()

        try:
            anyio.run(main)
            watch.check()
            assert started
            if self.isolates_processes:  # before the release: a hung OP must not end by itself
                self._assert_hung_processes_gone()
        finally:
            (self.tmp / "release").write_text("")

    def test_unpicklable_op_is_refused_before_the_run(self) -> None:
        wf = Workflow("unpicklable")
        wf.add(Step("locked", _ops.HoldsLock(), parameters={"x": 1}))
        if not self.isolates_processes:
            assert self.run(wf).status == "Succeeded"
            return
        with pytest.raises(WorkflowValidationError) as info:
            self.run(wf)
        assert "locked" in str(info.value)
        assert not (Path(".dflow-async") / "runs").exists() or not any(
            (Path(".dflow-async") / "runs").iterdir()
        )

    def _assert_hung_processes_gone(self) -> None:
        pids = [int(p.name.split("-")[1]) for p in self.tmp.glob("pid-*")]
        assert pids
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        assert not alive, f"attempt processes still running: {alive}"


class _Watch:
    """What a watched executor did wrong: attempts still out, malformed outcomes."""

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.problems: list[str] = []

    def check(self) -> None:
        if self.problems:
            pytest.fail("\n".join(self.problems), pytrace=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
