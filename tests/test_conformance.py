"""The built-in executors pass the public conformance suite that plugins subclass."""

from __future__ import annotations

from dflow_async.executors import InlineExecutor, ProcessExecutor
from dflow_async.testing import ExecutorConformance


class TestInlineExecutor(ExecutorConformance):
    def make_executor(self) -> InlineExecutor:
        return InlineExecutor()


class TestProcessExecutor(ExecutorConformance):
    isolates_processes = True

    def make_executor(self) -> ProcessExecutor:
        return ProcessExecutor(max_workers=2)


# --------------------------------------------------------------------------------------------
# The suite fails executors that break the contract, saying how, rather than hanging, passing,
# or failing on a consequence (a KeyError on a missing output, an AttributeError in the
# scheduler).

import contextlib  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import anyio  # noqa: E402
import cloudpickle  # noqa: E402
import pytest  # noqa: E402

from dflow_async.executors import AttemptHandle, Executor, Failed, Succeeded  # noqa: E402


class _NeverReports(ProcessExecutor):
    async def wait(self, handle):  # type: ignore[no-untyped-def]
        await anyio.sleep_forever()


class _DropsOutputs(ProcessExecutor):
    async def wait(self, handle):  # type: ignore[no-untyped-def]
        outcome = await super().wait(handle)
        if isinstance(outcome, Succeeded):  # e.g. a transport that loses the values
            return Succeeded(tuple({} for _ in outcome.outputs), outcome.duration)
        return outcome


class _ReturnsNone(ProcessExecutor):
    async def wait(self, handle):  # type: ignore[no-untyped-def]
        await super().wait(handle)


_CHILD = """
import sys, cloudpickle
from dflow_async.executors import run_attempt
spec = cloudpickle.loads(open(sys.argv[1], "rb").read())
open(sys.argv[2], "wb").write(cloudpickle.dumps(run_attempt(spec, capture_fds=True)))
"""


class _IgnoresCancel(Executor):
    """A process per attempt whose cancel() and stop() leave the process running."""

    name = "ignores-cancel"
    launched: list[subprocess.Popen[bytes]] = []  # what the test reaps afterwards

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def submit(self, spec):  # type: ignore[no-untyped-def]
        where = Path(spec.run_dir) / f"{spec.attempt_id.replace('/', '_')}.spec"
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(cloudpickle.dumps(spec))
        command = [sys.executable, "-c", _CHILD, str(where), f"{where}.out"]
        proc = subprocess.Popen(command, start_new_session=True)
        self.launched.append(proc)
        return AttemptHandle(spec, (proc, Path(f"{where}.out")))

    async def wait(self, handle):  # type: ignore[no-untyped-def]
        proc, out = handle.token
        if await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True) or not out.exists():
            return Failed(kind="infra", error=f"exit {proc.returncode}", retryable=True)
        return cloudpickle.loads(out.read_bytes())

    async def cancel(self, handle):  # type: ignore[no-untyped-def]
        pass


def _suite(executor: type[Executor], tmp: Path, **flags: object) -> ExecutorConformance:
    class Suite(ExecutorConformance):
        isolates_processes = True

        def make_executor(self) -> Executor:
            return executor(max_workers=2) if issubclass(executor, ProcessExecutor) else executor()

    for name, value in flags.items():
        setattr(Suite, name, value)
    suite = Suite()
    suite.tmp = tmp  # what the suite's autouse fixture sets
    return suite


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_suite_fails_an_executor_that_never_reports_an_outcome(tmp: Path) -> None:
    suite = _suite(_NeverReports, tmp, deadline=3.0)
    with pytest.raises(pytest.fail.Exception) as info:
        suite.test_op_raising_fails_the_step_without_retry()
    message = str(info.value)
    assert "workflow 'raising' did not finish within 3 s" in message
    assert "wait() never returned the outcome of ['boom#0@0']" in message


@pytest.mark.parametrize(
    ("executor", "expected"),
    [
        (_DropsOutputs, "Succeeded(outputs=({},), duration="),
        (_ReturnsNone, "returned None for attempt 'a#0@0': an outcome is a dflow_async"),
    ],
)
def test_the_suite_fails_an_executor_that_loses_outcomes(
    tmp: Path, executor: type[Executor], expected: str
) -> None:
    suite = _suite(executor, tmp)
    with pytest.raises(pytest.fail.Exception) as info:
        suite.test_happy_path_chain_and_fan_out()
    message = str(info.value)
    assert "'process'.wait() returned" in message and expected in message
    if executor is _DropsOutputs:
        assert "for attempt 'a#0@0': its outputs lack ['result']" in message


@pytest.mark.parametrize(
    "test", ["test_timeout_stops_the_attempt", "test_cancel_stops_running_attempts"]
)
def test_the_suite_fails_an_executor_that_leaves_stopped_attempts_running(
    tmp: Path, test: str
) -> None:
    # the hung OP used to be released before its process was looked for, so it ended by
    # itself and such an executor passed
    suite = _suite(_IgnoresCancel, tmp)
    try:
        with pytest.raises(AssertionError, match="attempt processes still running"):
            getattr(suite, test)()
    finally:
        for proc in _IgnoresCancel.launched:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _IgnoresCancel.launched.clear()
