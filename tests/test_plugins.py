"""Executors from other distributions are found through the ``dflow_async.executors`` entry
points: a tiny plugin distribution is installed for real (its ``.dist-info`` on ``sys.path``,
which is what pip leaves behind) and used by name, like ``executor="dask"`` will be."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dflow_async import Step, Workflow, WorkflowValidationError, op
from dflow_async.cli import app
from dflow_async.executors import available_executors, executor_class

PLUGIN = '''
"""A third-party executor: each attempt on a thread of its own (anyio's pool)."""
import asyncio

import anyio

from dflow_async.executors import AttemptHandle, Executor, run_attempt

SEEN = []  # the steps this executor ran, in order


class PerThreadExecutor(Executor):
    name = "per-thread"
    in_process = True

    async def start(self):
        pass

    async def stop(self):
        pass

    async def submit(self, spec):
        SEEN.append(spec.step)
        # chdir=False: these threads share the process's cwd; the OP gets its work directory
        # from current_context()
        task = asyncio.ensure_future(anyio.to_thread.run_sync(_run, spec))
        return AttemptHandle(spec, task)

    async def wait(self, handle):
        return await handle.token

    async def cancel(self, handle):
        handle.token.cancel()


def _run(spec):
    return run_attempt(spec, chdir=False)


not_an_executor = object()


class NeedsACluster(PerThreadExecutor):
    name = "needs-cluster"

    def __init__(self):
        raise ConnectionError("no scheduler at tcp://nowhere:8786")
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "echo_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "dflow_async_echo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dflow-async-echo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[dflow_async.executors]\n"
        "per-thread = echo_plugin:PerThreadExecutor\n"
        "broken = echo_plugin:not_an_executor\n"
        "gone = echo_plugin_removed:GoneExecutor\n"
        "misspelt = echo_plugin:PerThreadExecutr\n"
        "needs-cluster = echo_plugin:NeedsACluster\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    importlib.invalidate_caches()
    yield importlib.import_module("echo_plugin")
    sys.modules.pop("echo_plugin", None)


@op
def double(x: int) -> int:
    return 2 * x


@op
async def inc(x: int) -> int:
    return x + 1


def test_an_installed_plugin_is_listed(plugin) -> None:
    assert {"per-thread", "broken", "inline", "process"} <= set(available_executors())
    assert executor_class("per-thread") is plugin.PerThreadExecutor
    listed = CliRunner().invoke(app, ["executors"])
    assert listed.exit_code == 0
    assert "per-thread" in listed.output.split()


def test_a_workflow_runs_on_a_plugin_named_by_its_entry_point(plugin) -> None:
    wf = Workflow("w", executor="per-thread")
    a = Step("a", double, parameters={"x": 3})
    b = Step("b", inc, parameters={"x": a.outputs.parameters["result"]})
    wf.add(a)
    wf.add(b)
    result = wf.run()
    assert result.status == "Succeeded", [r.errors for r in result.records]
    assert result.query_step(name="b")[0].outputs.parameters["result"] == 7
    assert plugin.SEEN == ["a", "b"]  # both went through the plugin, plain and async alike


def test_an_entry_point_that_is_not_an_executor_is_refused_before_the_run(plugin) -> None:
    wf = Workflow("w", executor="broken")
    wf.add(Step("a", double, parameters={"x": 3}))
    with pytest.raises(WorkflowValidationError) as info:
        wf.run()
    (problem,) = info.value.problems
    assert "'echo_plugin:not_an_executor'" in problem and "not an Executor subclass" in problem
    assert not (Path(".dflow-async") / "runs").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gone", "ModuleNotFoundError: No module named 'echo_plugin_removed'"),
        ("misspelt", "AttributeError: module 'echo_plugin' has no attribute 'PerThreadExecutr'"),
    ],
)
def test_an_entry_point_that_cannot_be_loaded_is_refused_before_the_run(
    plugin, name: str, expected: str
) -> None:
    # a plugin whose module was removed, is misspelt, or imports a backend that is missing:
    # one problem naming the executor, its entry point and distribution, not an importlib
    # traceback out of the run's setup
    wf = Workflow("w", executor=name)
    wf.add(Step("a", double, parameters={"x": 3}))
    with pytest.raises(WorkflowValidationError) as info:
        wf.run()
    (problem,) = info.value.problems
    assert f"executor {name!r} (entry point" in problem
    assert "of dflow-async-echo) could not be loaded" in problem and expected in problem
    assert not (Path(".dflow-async") / "runs").exists()
    listed = CliRunner().invoke(app, ["executors"])  # listing names still works
    assert listed.exit_code == 0 and name in listed.output.split()


def test_a_plugin_that_cannot_be_created_is_refused_before_the_run(plugin) -> None:
    wf = Workflow("w", executor="needs-cluster")
    wf.add(Step("a", double, parameters={"x": 3}))
    with pytest.raises(WorkflowValidationError) as info:
        wf.run()
    (problem,) = info.value.problems
    assert "executor 'needs-cluster' (echo_plugin.NeedsACluster) could not be created" in problem
    assert "ConnectionError: no scheduler at tcp://nowhere:8786" in problem
    assert not (Path(".dflow-async") / "runs").exists()


def test_an_executor_whose_check_op_raises_is_reported_before_the_run(plugin) -> None:
    class Picky(plugin.PerThreadExecutor):
        def check_op(self, op):
            raise RuntimeError("cannot inspect this OP")

    wf = Workflow("w")
    wf.add(Step("a", double, parameters={"x": 3}))
    with pytest.raises(WorkflowValidationError) as info:
        wf.run(executor=Picky())
    (problem,) = info.value.problems
    assert problem.startswith("step w.a (OP ")
    assert "the 'per-thread' executor failed checking the OP" in problem
    assert "RuntimeError: cannot inspect this OP" in problem
    assert not (Path(".dflow-async") / "runs").exists()


def test_an_executor_object_closed_by_an_earlier_run_is_refused_before_the_run(plugin) -> None:
    executor = plugin.PerThreadExecutor()
    wf = Workflow("w", executor=executor)
    wf.add(Step("a", double, parameters={"x": 3}))
    assert wf.run(run_id="first").status == "Succeeded"
    with pytest.raises(WorkflowValidationError) as info:
        wf.run(run_id="second")
    (problem,) = info.value.problems
    assert "the 'per-thread' executor object was closed at the end of an earlier run" in problem
    assert "executor='per-thread'" in problem
    # no run directory (read as an Interrupted run by `dflow-async list`) for a run that never began
    assert sorted(p.name for p in (Path(".dflow-async") / "runs").iterdir()) == ["first"]
    assert wf.run(run_id="third", executor=plugin.PerThreadExecutor()).status == "Succeeded"


def test_an_executor_class_without_a_name_is_refused_before_the_run(plugin) -> None:
    class Nameless(plugin.PerThreadExecutor):
        pass

    del plugin.PerThreadExecutor.name  # as a plugin that relied on its entry point's name
    wf = Workflow("w")
    wf.add(Step("a", double, parameters={"x": 3}))
    with pytest.raises(WorkflowValidationError) as info:
        wf.run(executor=Nameless())
    (problem,) = info.value.problems
    assert "Nameless sets no name: give the class a `name = ...`" in problem
    assert not (Path(".dflow-async") / "runs").exists()


def _second_distribution(site: Path, entry_points: str) -> None:
    info = site / "dflow_async_other-0.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dflow-async-other\nVersion: 0.2\n")
    (info / "entry_points.txt").write_text("[dflow_async.executors]\n" + entry_points)
    importlib.invalidate_caches()


def test_a_name_two_distributions_register_is_refused_naming_both(plugin, tmp_path: Path) -> None:
    # which one "per-thread" meant depended on sys.path order, silently
    _second_distribution(
        tmp_path / "site",
        "per-thread = echo_plugin:NeedsACluster\ninline = echo_plugin:PerThreadExecutor\n",
    )
    wf = Workflow("w", executor="per-thread")
    wf.add(Step("a", double, parameters={"x": 3}))
    with pytest.raises(WorkflowValidationError) as info:
        wf.run()
    (problem,) = info.value.problems
    assert (
        "executor 'per-thread' is registered by more than one installed distribution: "
        "dflow-async-echo (echo_plugin:PerThreadExecutor), dflow-async-other "
        "(echo_plugin:NeedsACluster); uninstall all but one"
    ) in problem
    # the listing says so, and that a plugin named like a built-in is not the one used
    listed = CliRunner().invoke(app, ["executors"]).output.splitlines()
    assert "inline  (built-in)  ! a plugin of this name in dflow-async-other is ignored" in listed
    per_thread = next(line for line in listed if line.startswith("per-thread "))
    assert per_thread.startswith("per-thread  (dflow-async-echo, dflow-async-other)  ! executor")
    assert "process  (built-in)" in listed
    broken = next(line for line in listed if line.startswith("gone "))
    assert "could not be loaded: ModuleNotFoundError" in broken
    assert Workflow("w2", executor="inline").validate() is not None  # the built-in, as before
