"""ProcessExecutor: a pool of local worker processes, one attempt per worker at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import anyio
import psutil
import pytest

from dflow_async._op import op
from dflow_async._spec import AttemptSpec, Failed, SliceInput, Succeeded
from dflow_async.exceptions import ExecutorClosedError
from dflow_async.executors._process import ProcessExecutor

# -- OPs (module level: workers import this module to unpickle them) --------------------


class Where(TypedDict):
    double: int
    cwd: str
    pid: int


@op
def where(x: int) -> Where:
    return Where(double=2 * x, cwd=os.getcwd(), pid=os.getpid())


@op
def boom(x: int) -> int:
    raise ValueError(f"bad input {x}")


@op
def suicide(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


@op
def hang(x: int) -> int:
    """Record its pid and a child's pid in the work dir, then hang."""
    child = subprocess.Popen(["sleep", "60"])
    Path("pids.tmp").write_text(f"{os.getpid()} {child.pid}")
    os.replace("pids.tmp", "pids")
    time.sleep(60)
    return x


@op
def gated(x: int) -> int:
    """Return once the test creates ``go`` in the work dir (fail after 10 s)."""
    deadline = time.monotonic() + 10
    while not os.path.exists("go"):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.01)
    return x


@op
def make_lock() -> Any:
    return threading.Lock()


@op
def counted_one(marker_dir: str) -> int:
    with open(Path(marker_dir) / "one", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return 1


@op
def lock_until_fixed(x: int, marker_dir: str) -> Any:
    with open(Path(marker_dir) / "lock", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return x + 1 if (Path(marker_dir) / "fixed").exists() else threading.Lock()


# -- helpers ------------------------------------------------------------------------------


def make_spec(tmp_path: Path, the_op: Any, inputs: dict[str, Any], name: str = "a") -> AttemptSpec:
    workdir = str(tmp_path / name)
    return AttemptSpec(
        attempt_id=name,
        run_id="r",
        step="s",
        key=None,
        attempt=0,
        op=the_op,
        slices=(SliceInput(index=None, inputs=inputs, workdir=workdir),),
    )


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await anyio.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def descendants() -> set[int]:
    """Our descendant processes, minus multiprocessing's shared fork server/resource tracker."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            continue
        if "forkserver" in cmdline or "resource_tracker" in cmdline:
            continue
        found.add(proc.pid)
    return found


async def read_pids(workdir: Path) -> tuple[int, int]:
    pids = workdir / "pids"
    await eventually(pids.exists, "the OP recorded its pids")
    worker, child = pids.read_text().split()
    return int(worker), int(child)


# -- tests --------------------------------------------------------------------------------


def test_module_op_and_closure_run_in_their_workdir(tmp_path: Path) -> None:
    offset = 100

    @op
    def add(x: int) -> int:  # a closure: cloudpickle sends it by value
        return x + offset + len(os.listdir("."))

    async def main() -> None:
        async with ProcessExecutor(2) as ex:
            first = await ex.run(make_spec(tmp_path, where, {"x": 21}, "w1"))
            second = await ex.run(make_spec(tmp_path, add, {"x": 1}, "w2"))
        assert isinstance(first, Succeeded), first
        (out,) = first.outputs
        assert out["double"] == 42
        assert out["cwd"] == os.path.realpath(tmp_path / "w1")
        assert out["pid"] != os.getpid()
        assert isinstance(second, Succeeded), second
        assert second.outputs == ({"result": 101},)

    anyio.run(main)


def test_op_raising_is_a_user_failure(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            outcome = await ex.run(make_spec(tmp_path, boom, {"x": 3}))
        assert isinstance(outcome, Failed)
        assert outcome.kind == "user"
        assert "ValueError: bad input 3" in outcome.error
        assert "boom" in outcome.traceback

    anyio.run(main)


def test_dead_worker_is_an_infra_failure_and_replaced(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            lost = await ex.run(make_spec(tmp_path, suicide, {"x": 1}, "dies"))
            after = await ex.run(make_spec(tmp_path, where, {"x": 2}, "after"))
        assert isinstance(lost, Failed), lost
        assert lost.kind == "infra"
        assert lost.retryable
        assert "SIGKILL" in lost.error and "'dies'" in lost.error
        assert isinstance(after, Succeeded), after
        assert after.outputs[0]["double"] == 4

    anyio.run(main)


def test_cancel_running_kills_worker_and_its_subprocesses(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            handle = await ex.submit(make_spec(tmp_path, hang, {"x": 1}, "hung"))
            worker_pid, child_pid = await read_pids(tmp_path / "hung")
            await ex.cancel(handle)
            outcome = await ex.wait(handle)
            assert isinstance(outcome, Failed)
            assert outcome.kind == "cancelled"
            await ex.cancel(handle)  # idempotent
            await eventually(lambda: gone(worker_pid) and gone(child_pid), "both were killed")
            after = await ex.run(make_spec(tmp_path, where, {"x": 5}, "after"))
            assert isinstance(after, Succeeded), after
            assert after.outputs[0]["pid"] != worker_pid

    anyio.run(main)


def test_cancelling_the_waiter_does_not_kill_the_attempt(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            handle = await ex.submit(make_spec(tmp_path, gated, {"x": 7}, "g"))
            with anyio.move_on_after(0.05):
                await ex.wait(handle)
            (tmp_path / "g").mkdir(exist_ok=True)
            (tmp_path / "g" / "go").touch()
            outcome = await ex.wait(handle)
        assert isinstance(outcome, Succeeded), outcome
        assert outcome.outputs == ({"result": 7},)

    anyio.run(main)


def test_cancel_queued_attempt(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            running = await ex.submit(make_spec(tmp_path, gated, {"x": 1}, "first"))
            queued = await ex.submit(make_spec(tmp_path, where, {"x": 2}, "second"))
            await ex.cancel(queued)
            await ex.cancel(queued)
            dropped = await ex.wait(queued)
            (tmp_path / "first").mkdir(exist_ok=True)
            (tmp_path / "first" / "go").touch()
            done = await ex.wait(running)
        assert isinstance(dropped, Failed)
        assert dropped.kind == "cancelled"
        assert not (tmp_path / "second").exists()  # it never ran
        assert isinstance(done, Succeeded), done

    anyio.run(main)


def test_more_attempts_than_workers(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProcessExecutor(2) as ex:
            handles = [
                await ex.submit(make_spec(tmp_path, where, {"x": i}, f"w{i}")) for i in range(7)
            ]
            outcomes = [await ex.wait(h) for h in handles]
        outcomes = [o for o in outcomes if isinstance(o, Succeeded)]
        assert len(outcomes) == 7, outcomes
        assert [o.outputs[0]["double"] for o in outcomes] == [2 * i for i in range(7)]
        assert len({o.outputs[0]["pid"] for o in outcomes}) <= 2

    anyio.run(main)


def test_unpicklable_op_and_output(tmp_path: Path) -> None:
    lock = threading.Lock()

    @op
    def locked(x: int) -> int:
        with lock:
            return x

    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            problem = ex.check_op(locked)
            assert ex.check_op(where) is None
            sent = await ex.run(make_spec(tmp_path, locked, {"x": 1}, "locked"))
            returned = await ex.run(make_spec(tmp_path, make_lock, {}, "lock"))
        assert problem is not None
        assert "cannot be sent to worker processes" in problem
        assert "executor='inline'" in problem
        assert isinstance(sent, Failed)
        assert (sent.kind, sent.retryable) == ("fatal", False)
        assert "cannot be sent to a worker process" in sent.error
        assert isinstance(returned, Failed)
        assert returned.kind == "user"
        assert "'result'" in returned.error and "pickle" in returned.error

    anyio.run(main)


def test_an_unpicklable_output_fails_its_step_in_a_run_that_resumes(tmp_path: Path) -> None:
    """The worker process cannot send the value back: the step fails (a user failure, not
    retried), the run fails, and a resume reruns only that step."""
    from dflow_async import RetryPolicy, Step, Workflow
    from dflow_async._journal import read_run

    marks = tmp_path / "marks"
    marks.mkdir()

    def build() -> Workflow:
        wf = Workflow("unpicklable-proc", executor="process", store=str(tmp_path / "store"))
        one = Step("one", counted_one, parameters={"marker_dir": str(marks)})
        params = {"x": one.outputs.parameters["result"], "marker_dir": str(marks)}
        policy = RetryPolicy(max_retries=2, backoff=0, jitter=0)
        wf.add(one)
        wf.add(Step("lock", lock_until_fixed, parameters=params, retries=policy))
        return wf

    result = build().run()
    assert result.status == "Failed"
    (rec,) = result.query_step(name="lock")
    assert rec.phase == "Failed" and rec.attempts == 1, rec.errors
    error = rec.error or ""
    assert error.startswith("attempt 0: [user] step 'lock' returned a value of type _thread.lock")
    assert "output 'result'" in error and "could not be pickled" in error
    assert "Return picklable values" in error and "Artifact output" in error
    assert read_run(result.run_dir).status == "Failed"
    (marks / "fixed").write_text("")
    resumed = build().run(resume=result.run_id)
    assert resumed.status == "Succeeded"
    assert resumed.query_step(name="lock")[0].outputs.parameters["result"] == 2
    runs = [len((marks / name).read_text().split()) for name in ("one", "lock")]
    assert runs == [1, 2]


def test_aclose_is_idempotent_and_final(tmp_path: Path) -> None:
    async def main() -> None:
        ex = ProcessExecutor(1)
        with pytest.raises(ExecutorClosedError):
            await ex.submit(make_spec(tmp_path, where, {"x": 1}))
        async with ex:
            assert isinstance(await ex.run(make_spec(tmp_path, where, {"x": 1})), Succeeded)
        await ex.aclose()
        with pytest.raises(ExecutorClosedError):
            async with ex:
                pass
        with pytest.raises(ExecutorClosedError):
            await ex.submit(make_spec(tmp_path, where, {"x": 1}))

    anyio.run(main)


def test_nothing_left_running_after_aclose(tmp_path: Path) -> None:
    async def main() -> None:
        before = descendants()
        ex = ProcessExecutor(3)
        async with ex:
            ok = await ex.run(make_spec(tmp_path, where, {"x": 1}, "ok"))
            hung = await ex.submit(make_spec(tmp_path, hang, {"x": 1}, "hung"))
            queued = [
                await ex.submit(make_spec(tmp_path, gated, {"x": i}, f"q{i}")) for i in (1, 2, 3)
            ]
            worker_pid, child_pid = await read_pids(tmp_path / "hung")
        assert isinstance(ok, Succeeded)
        outcome = await ex.wait(hung)
        assert isinstance(outcome, Failed) and outcome.kind == "cancelled"
        for handle in queued:
            dropped = await ex.wait(handle)
            assert isinstance(dropped, Failed) and dropped.kind == "cancelled"
        assert gone(worker_pid) and gone(ok.outputs[0]["pid"])
        await eventually(lambda: gone(child_pid), "the OP's subprocess was killed")
        await eventually(lambda: descendants() <= before, "every worker exited")

    anyio.run(main)


class _FailsToLoad:
    """Pickles fine in the driver, raises when a worker unpickles it."""

    def __reduce__(self) -> Any:
        def refuse() -> None:
            raise RuntimeError("cannot load me here")

        return (refuse, ())


def test_spec_that_fails_to_load_in_the_worker(tmp_path: Path) -> None:
    async def main() -> None:
        async with ProcessExecutor(1) as ex:
            outcome = await ex.run(make_spec(tmp_path, where, {"x": _FailsToLoad()}, "bad"))
            after = await ex.run(make_spec(tmp_path, where, {"x": 1}, "after"))
        assert isinstance(outcome, Failed)
        assert (outcome.kind, outcome.retryable) == ("fatal", False)
        assert "could not be unpickled in the worker" in outcome.error
        assert "cannot load me here" in outcome.error
        assert isinstance(after, Succeeded), after

    anyio.run(main)


def test_a_policy_naming_infra_retries_a_dead_worker(tmp_path: Path) -> None:
    """The issue's wording: a worker that dies fails its attempt as ``infra``; a policy that
    spells out the kinds it retries gets it retried."""
    from dflow_async import RetryPolicy, Step, Workflow
    from dflow_async.testing._ops import die_once

    policy = RetryPolicy(max_retries=2, backoff=0, jitter=0, retry_on={"transient", "infra"})
    wf = Workflow("dies-once", executor="process", store=str(tmp_path / "store"))
    wf.add(Step("die", die_once, parameters={"marker_dir": str(tmp_path)}, retries=policy))
    (rec,) = wf.run().records
    assert rec.phase == "Succeeded", rec.errors
    assert rec.attempts == 2
    assert rec.errors[0].startswith("attempt 0: [infra] the worker process")


def test_lost_is_another_name_for_infra_in_retry_on() -> None:
    from dflow_async import RetryPolicy

    assert RetryPolicy(retry_on={"lost"}).retry_on == {"infra"}
    assert RetryPolicy(retry_on={"lost"}).should_retry("infra", 0)
    with pytest.raises(ValueError, match=r"unknown kinds \['oops'\]"):
        RetryPolicy(retry_on={"oops"})


# A script that runs its workflow at import time, not under `if __name__ == "__main__":`.
UNGUARDED = """
import os
from dflow_async import Step, Workflow, op
from dflow_async.executors import ProcessExecutor

@op
def send_email(x: int) -> int:  # an inline step with a side effect
    with open(os.environ["EMAILS"], "a") as fh:
        fh.write(f"email from pid {os.getpid()}\\n")
    return x

@op
def heavy(x: int) -> int:
    return x * 2

pool = ProcessExecutor(max_workers=2, mp_context=os.environ["CONTEXT"])
wf = Workflow("unguarded")
e = Step("email", send_email, parameters={"x": 1})
wf.add(e)
wf.add([
    Step(f"heavy{i}", heavy, parameters={"x": e.outputs.parameters["result"]}, executor=pool)
    for i in range(4)
])
result = wf.run()
print(__name__, result.status)
for record in result.query_step(phase="Failed"):
    print(record.name, record.error)
"""


@pytest.mark.parametrize("context", ["forkserver", "spawn"])
def test_a_script_that_runs_its_workflow_when_imported_is_told_to_guard_it(
    tmp_path: Path, context: str
) -> None:
    """Each worker process imports the main script: unguarded, it ran the whole workflow
    again there (the inline step's side effect twice, a second run in the store)."""
    import sys

    script = tmp_path / "flow.py"
    script.write_text(UNGUARDED)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "EMAILS": str(tmp_path / "emails.txt")}
    env["CONTEXT"] = context
    done = subprocess.run(
        [sys.executable, "flow.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "__main__ Failed", done.stdout + done.stderr  # the driver's run only
    assert len((tmp_path / "emails.txt").read_text().splitlines()) == 1
    assert len(os.listdir(tmp_path / ".dflow-async" / "runs")) == 1
    advice = f"{script} runs a workflow when it is imported, and worker processes import the main"
    guard = 'Put the code that runs the workflow under `if __name__ == "__main__":`'
    failed = dict(line.split(" ", 1) for line in lines[1:])
    assert sorted(failed) == ["heavy0", "heavy1", "heavy2", "heavy3"]  # not retried either
    for error in failed.values():
        assert error.startswith("attempt 0: [fatal] "), error
        assert advice in error and error.endswith(guard)
    assert "no worker process can start" in done.stdout  # no worker started after that
    # each worker that started said why it stopped, without a traceback
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert 1 <= len(said) <= 2 and all(advice in line for line in said), done.stderr
    assert "Traceback" not in done.stderr
