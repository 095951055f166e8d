"""The ``dflow-async`` command line, run as a real subprocess on workflow files in tmp_path."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dflow_async import __version__
from dflow_async.cli import app

SRC = Path(__file__).resolve().parents[1] / "src"

HEADER = """\
from pathlib import Path

from dflow_async import DAG, RetryPolicy, Step, Steps, Workflow, op


@op
def plus1(x: int) -> int:
    return x + 1


@op
def boom(x: int) -> int:
    raise ValueError(f"bad input {x}")
"""

SIMPLE = """
inner = DAG("inner-tpl", inputs={"x": 1})
a = Step("inner-a", plus1, {"x": inner.inputs.parameters["x"]})
b = Step("inner-b", plus1, {"x": a.outputs.parameters["result"]})
inner.add([a, b])

wf = Workflow("simple")
first = Step("first-step", plus1, {"x": 1})
wf.add(first)
wf.add([
    Step("second-step", plus1, {"x": first.outputs.parameters["result"]}),
    Step("sub-flow", inner, {"x": first.outputs.parameters["result"]}),
])

if __name__ == "__main__":
    Path("ran-as-main").write_text("the CLI must not run the file as __main__")
    wf.run()
"""


def write(tmp_path: Path, name: str, body: str, header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text(header + textwrap.dedent(body))
    return path


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env["DFLOW_ASYNC_HOME"] = str(tmp_path / "store")
    env["NO_COLOR"] = "1"
    return env


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dflow_async.cli", *args],
        cwd=tmp_path,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=90,
    )


# ---------------------------------------------------------------- run


def test_run_success_prints_summary(tmp_path: Path) -> None:
    write(tmp_path, "simple.py", SIMPLE)
    proc = cli(tmp_path, "run", "simple.py")
    assert proc.returncode == 0, proc.stderr
    for path in ("first-step", "second-step", "sub-flow", "sub-flow/inner-a", "sub-flow/inner-b"):
        assert path in proc.stdout
    assert "Succeeded" in proc.stdout
    assert "workflow 'simple' succeeded" in proc.stdout
    run_id = re.search(r"run id:\s+(\S+)", proc.stdout)
    run_dir = re.search(r"run dir:\s+(\S+)", proc.stdout)
    assert run_id and run_dir
    assert run_id.group(1).startswith("simple-")
    assert Path(run_dir.group(1)) == tmp_path / "store" / "runs" / run_id.group(1)
    assert Path(run_dir.group(1)).is_dir()
    assert not (tmp_path / "ran-as-main").exists()


def test_run_quiet_and_options(tmp_path: Path) -> None:
    write(tmp_path, "simple.py", SIMPLE)
    proc = cli(tmp_path, "run", "simple.py", "--quiet", "--parallelism", "1")
    assert proc.returncode == 0, proc.stderr
    assert "workflow 'simple' succeeded" in proc.stdout
    assert "first-step" not in proc.stdout  # no step table when quiet
    assert "run id:" in proc.stdout


FAILING = """
wf = Workflow("failing")
ok = Step("ok-step", plus1, {"x": 1})
wf.add(ok)
retry = RetryPolicy(max_retries=1, retry_on={"user"}, backoff=0, jitter=0)
wf.add(Step("boom-step", boom, {"x": ok.outputs.parameters["result"]}, retries=retry))
"""


def test_run_failure_exits_1_and_shows_error(tmp_path: Path) -> None:
    write(tmp_path, "failing.py", FAILING)
    proc = cli(tmp_path, "run", "failing.py")
    assert proc.returncode == 1, proc.stderr
    assert "boom-step" in proc.stdout
    assert "Failed" in proc.stdout
    assert "ValueError: bad input 2" in proc.stdout
    assert "workflow 'failing' failed" in proc.stdout
    assert "Traceback" not in proc.stderr

    quiet = cli(tmp_path, "run", "failing.py", "-q")
    assert quiet.returncode == 1
    assert "boom-step" in quiet.stdout
    assert "ValueError: bad input 2" in quiet.stdout


def test_big_run_summarises_by_phase(tmp_path: Path) -> None:
    write(
        tmp_path,
        "big.py",
        """
        wf = Workflow("big")
        wf.add([Step(f"s{i:03d}", plus1, {"x": i}) for i in range(55)])
        wf.add(Step("last-one", boom, {"x": 0}))
        """,
    )
    proc = cli(tmp_path, "run", "big.py")
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"Succeeded\s*\S\s*55", proc.stdout)
    assert "last-one" in proc.stdout  # failed steps are listed
    assert "s007" not in proc.stdout  # succeeded ones are only counted


INVALID = """
wf = Workflow("invalid")
wf.add(Step("unbound", plus1, {"y": 1}))
wf.add(Step("mistyped", plus1, {"x": "nope"}))
"""


def test_validation_error_exits_2_with_every_problem(tmp_path: Path) -> None:
    write(tmp_path, "invalid.py", INVALID)
    for command in ("run", "graph"):
        proc = cli(tmp_path, command, "invalid.py")
        assert proc.returncode == 2, proc.stderr
        assert "cannot run, 3 problems found" in proc.stderr
        assert "binds parameter 'y'" in proc.stderr
        assert "required input parameter 'x' is not bound" in proc.stderr
        assert "input 'x' expects int, got str" in proc.stderr
        assert "Traceback" not in proc.stderr


PARAMETERS = """
from dflow_async import InputParameter


@op
def describe(n: int, label: str, xs: list, flag: bool, quoted: str) -> str:
    return f"{n!r} {label!r} {xs!r} {flag!r} {quoted!r}"


entry = Steps("entry", inputs={"n": InputParameter(), "label": "none", "xs": [], "flag": False,
                               "quoted": ""})
p = entry.inputs.parameters
entry.add(Step("describe", describe, {k: p[k] for k in ("n", "label", "xs", "flag", "quoted")}))
wf = Workflow("params", steps=entry)
"""


def test_run_takes_parameters_and_its_hints_name_the_option(tmp_path: Path) -> None:
    """`run` had no way to pass parameters, and said to pass a required one to
    run(parameters=...)."""
    from dflow_async import Run

    write(tmp_path, "params.py", PARAMETERS)
    proc = cli(
        tmp_path,
        "run",
        "params.py",
        "-q",
        "--param",
        "n=3",
        "--param",
        "label=hello world",  # not JSON: the string
        "-P",
        "xs=[1, 2]",
        "--param",
        "flag=true",
        "--param",
        'quoted="7"',  # JSON for the string "7"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"run id:\s+(\S+)", proc.stdout)
    assert run_id
    run = Run.open(run_id.group(1), store=tmp_path / "store")
    (rec,) = run.records
    assert rec.outputs.parameters["result"] == "3 'hello world' [1, 2] True '7'"

    missing = cli(tmp_path, "run", "params.py")
    assert missing.returncode == 2
    assert "input 'n' has no value; give it a default (inputs={'n': ...}) or pass it with " in (
        missing.stderr
    )
    assert "--param n=VALUE" in missing.stderr and "run(parameters" not in missing.stderr
    unknown = cli(tmp_path, "run", "params.py", "--param", "n=1", "--param", "m=2")
    assert unknown.returncode == 2
    assert "--param m=... gives 'm', which 'entry' does not declare" in unknown.stderr
    for bad, said in (
        ("n", "--param takes NAME=VALUE, got 'n'"),
        ("=1", "--param takes NAME=VALUE, got '=1'"),
    ):
        proc = cli(tmp_path, "run", "params.py", "--param", bad)
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    twice = cli(tmp_path, "run", "params.py", "--param", "n=1", "--param", "n=2")
    assert twice.returncode == 2 and "--param gives 'n' twice" in twice.stderr
    # a graph is drawn without values
    graph = cli(tmp_path, "graph", "params.py")
    assert graph.returncode == 0, graph.stderr
    assert '["describe"]' in graph.stdout


def test_unknown_executor_is_a_validation_error(tmp_path: Path) -> None:
    write(tmp_path, "simple.py", SIMPLE)
    proc = cli(tmp_path, "run", "simple.py", "--executor", "no-such-executor")
    assert proc.returncode == 2
    assert "no executor named 'no-such-executor'" in proc.stderr


def test_an_executor_that_cannot_start_exits_2_with_the_resume_command(tmp_path: Path) -> None:
    body = """
    from dflow_async.executors import InlineExecutor

    class Unreachable(InlineExecutor):
        async def start(self):
            raise ConnectionError("scheduler unreachable")

    wf = Workflow("cannot-start", executor=Unreachable())
    wf.add(Step("one", plus1, {"x": 1}))
    """
    write(tmp_path, "flow.py", body)
    proc = cli(tmp_path, "run", "flow.py")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    found = re.search(r"no step of run (cannot-start-\w+) was started", proc.stderr)
    assert found, proc.stderr
    run_id = found.group(1)
    assert "could not start (ConnectionError: scheduler unreachable)" in proc.stderr
    assert f"`dflow-async resume {run_id}`" in proc.stderr.replace("\n", " ")
    # what it says works, once the executor does: `resume --executor inline`
    proc = cli(tmp_path, "resume", run_id, "--executor", "inline")
    assert proc.returncode == 0, proc.stderr
    assert "Succeeded" in proc.stdout


def test_process_executor_imports_ops_from_the_file(tmp_path: Path) -> None:
    # a local helper module next to the file: importable in the driver and in the workers
    (tmp_path / "wfhelpers.py").write_text(
        "from dflow_async import op\n\n\n@op\ndef triple(x: int) -> int:\n    return 3 * x\n"
    )
    write(
        tmp_path,
        "procwf.py",
        """
        from wfhelpers import triple

        wf = Workflow("proc")
        one = Step("local-op", plus1, {"x": 1})
        wf.add(one)
        wf.add(Step("helper-op", triple, {"x": one.outputs.parameters["result"]}))
        """,
    )
    proc = cli(tmp_path, "run", "procwf.py", "--executor", "process")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "local-op" in proc.stdout
    assert "helper-op" in proc.stdout


# ---------------------------------------------------------------- choosing the object

TWO = """
first = Workflow("first")
first.add(Step("only-in-first", plus1, {"x": 1}))
second = Workflow("second")
second.add(Step("only-in-second", plus1, {"x": 2}))
same_as_first = first
"""


def test_file_object_selection(tmp_path: Path) -> None:
    write(tmp_path, "two.py", TWO)
    proc = cli(tmp_path, "run", "two.py:second")
    assert proc.returncode == 0, proc.stderr
    assert "only-in-second" in proc.stdout
    assert "only-in-first" not in proc.stdout


def test_ambiguous_and_wrong_objects(tmp_path: Path) -> None:
    write(tmp_path, "two.py", TWO)
    proc = cli(tmp_path, "run", "two.py")
    assert proc.returncode == 2
    assert "found 2: first, second" in proc.stderr
    assert "FILE.py:NAME" in proc.stderr

    proc = cli(tmp_path, "run", "two.py:missing")
    assert proc.returncode == 2
    assert "no attribute 'missing'" in proc.stderr

    proc = cli(tmp_path, "run", "two.py:plus1")
    assert proc.returncode == 2
    assert "not a dflow_async.Workflow" in proc.stderr

    write(tmp_path, "none.py", "x = 1\n")
    proc = cli(tmp_path, "graph", "none.py")
    assert proc.returncode == 2
    assert "found none" in proc.stderr

    proc = cli(tmp_path, "run", "does-not-exist.py")
    assert proc.returncode == 2
    assert "no such file" in proc.stderr


COMPAT = """\
from dflow_async.dflow import Step, Workflow
from dflow_async.dflow.python import OP, OPIO, OPIOSign, PythonOPTemplate


class Add(OP):
    @classmethod
    def get_input_sign(cls):
        return OPIOSign({"a": int, "b": int})

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"c": int})

    def execute(self, op_in):
        return OPIO({"c": op_in["a"] + op_in["b"]})


wf = Workflow("compat")
first = Step("add-first", PythonOPTemplate(Add), parameters={"a": 1, "b": 2})
wf.add(first)
then = {"a": first.outputs.parameters["c"], "b": 4}
wf.add(Step("add-then", PythonOPTemplate(Add), parameters=then))
empty = Workflow("empty")
"""


def test_run_and_graph_a_dflow_compatibility_workflow(tmp_path: Path) -> None:
    write(tmp_path, "compat.py", COMPAT, header="")
    proc = cli(tmp_path, "run", "compat.py:wf", "--executor", "process")
    assert proc.returncode == 0, proc.stderr
    assert "add-first" in proc.stdout and "add-then" in proc.stdout
    assert "workflow 'compat' succeeded" in proc.stdout
    proc = cli(tmp_path, "graph", "compat.py:wf")
    assert proc.returncode == 0, proc.stderr
    assert mermaid_edges(proc.stdout) == {("add-first", "add-then")}
    proc = cli(tmp_path, "run", "compat.py")  # two compatibility Workflows: which one?
    assert proc.returncode == 2
    assert "found 2: wf, empty" in proc.stderr
    proc = cli(tmp_path, "run", "compat.py:empty")
    assert proc.returncode == 2
    assert "workflow 'empty' has no steps" in proc.stderr
    proc = cli(tmp_path, "run", "compat.py:first")  # the error names the class and its module
    assert proc.returncode == 2
    assert "compat.py:first is a dflow_async.dflow._step.Step, not a" in proc.stderr


def test_file_that_raises_while_loading(tmp_path: Path) -> None:
    write(tmp_path, "broken.py", "\nraise RuntimeError('broken on purpose')\n")
    proc = cli(tmp_path, "run", "broken.py")
    assert proc.returncode == 2
    assert "RuntimeError: broken on purpose" in proc.stderr
    assert "broken.py" in proc.stderr
    assert "importlib" not in proc.stderr  # only the user's frames


# ---------------------------------------------------------------- graph


def mermaid_edges(text: str) -> set[tuple[str, str]]:
    labels = dict(re.findall(r"^\s*(\w+)\[\[?\"(.*?)\"\]?\]$", text, re.M))
    labels.update(re.findall(r"^\s*subgraph (\w+)\[\"(.*?)\"\]$", text, re.M))
    pairs = re.findall(r"^\s*(\w+) -\.?->(?:\|[^|]*\|)? (\w+)$", text, re.M)
    return {(labels[a], labels[b]) for a, b in pairs}


def dot_edges(text: str) -> set[tuple[str, str]]:
    labels = dict(re.findall(r'^\s*"(\w+)" \[label="(.*?)"', text, re.M))
    pairs = re.findall(r'^\s*"(\w+)" -> "(\w+)"', text, re.M)
    return {(labels[a], labels[b]) for a, b in pairs}


def test_graph_mermaid(tmp_path: Path) -> None:
    write(tmp_path, "simple.py", SIMPLE)
    proc = cli(tmp_path, "graph", "simple.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("flowchart TD")
    assert 'subgraph t1["inner-tpl"]' in out
    assert mermaid_edges(out) == {
        ("first-step", "second-step"),
        ("first-step", "sub-flow"),
        ("inner-a", "inner-b"),
        ("sub-flow", "inner-tpl"),  # the step uses the template's subgraph
    }
    # drawing writes nothing: no store, no run directory ($DFLOW_ASYNC_HOME is tmp_path/store)
    assert sorted(p.name for p in tmp_path.iterdir()) in (
        ["simple.py"],
        ["__pycache__", "simple.py"],
    )


def test_graph_dot(tmp_path: Path) -> None:
    write(tmp_path, "simple.py", SIMPLE)
    proc = cli(tmp_path, "graph", "simple.py:wf", "--format", "dot")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith('digraph "simple" {')
    assert 'subgraph "cluster_t1"' in out
    assert 'label="inner-tpl";' in out
    assert dot_edges(out) == {
        ("first-step", "second-step"),
        ("first-step", "sub-flow"),
        ("inner-a", "inner-b"),
        ("sub-flow", "inner-a"),  # to the cluster's first node, clipped at the cluster
    }
    assert 'lhead="cluster_t1"' in out


RECURSIVE = """
loop = Steps("loop", inputs={"i": 0})
inc = Step("increment", plus1, {"x": loop.inputs.parameters["i"]})
loop.add(inc)
loop.add(Step("again", loop, {"i": inc.outputs.parameters["result"]},
              when="{{steps.increment.outputs.parameters.result}} < 3"))

shared = DAG("shared", inputs={"i": 0})
shared.add(Step("work", plus1, {"x": shared.inputs.parameters["i"]}))

wf = Workflow("recursive")
wf.add(Step("start", loop, {"i": 0}))
wf.add([Step("use-1", shared, {"i": 1}), Step("use \\"2\\"", shared, {"i": 2})])
"""


def test_graph_recursion_and_shared_templates_drawn_once(tmp_path: Path) -> None:
    write(tmp_path, "rec.py", RECURSIVE)
    mermaid = cli(tmp_path, "graph", "rec.py").stdout
    assert mermaid.count("subgraph ") == 2
    assert mermaid.count('["work"]') == 1
    assert re.search(r"^\s*\w+ -\.->\|recursion\| \w+$", mermaid, re.M)
    assert ("again", "increment") in mermaid_edges(mermaid)
    assert "use #quot;2#quot;" in mermaid  # quotes in names are escaped

    proc = cli(tmp_path, "graph", "rec.py", "-f", "dot")
    assert proc.returncode == 0, proc.stderr
    dot = proc.stdout
    assert dot.count("subgraph ") == 2
    assert 'label="recursion"' in dot
    assert ("again", "increment") in dot_edges(dot)
    assert r'label="use \"2\""' in dot

    run = cli(tmp_path, "run", "rec.py")
    assert run.returncode == 0, run.stderr
    assert "start/again/again/increment" in run.stdout


# ---------------------------------------------------------------- Ctrl-C


HANGING_OP = """
import time


HERE = Path(__file__).parent


@op
def hang(x: int) -> int:
    (HERE / "started").write_text("yes")
    while not (HERE / "release").exists():
        time.sleep(0.05)
    return x


"""


def interrupt_run(tmp_path: Path, name: str, workflow: str, **env: str) -> tuple[int, str, str]:
    """``dflow-async run NAME`` on a one-step workflow (``workflow`` makes ``wf``) whose step
    hangs, interrupted by a SIGINT once the step started: (exit code, stdout, stderr)."""
    write(tmp_path, name, HANGING_OP + workflow + '\nwf.add(Step("hang", hang, {"x": 1}))\n')
    # a shell's background job starts with SIGINT ignored; give the child Python's handler
    code = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('dflow_async.cli', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", name],
        cwd=tmp_path,
        env={**env_for(tmp_path), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the step never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        (tmp_path / "release").write_text("go")
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    code, out, err = interrupt_run(tmp_path, "hang.py", 'wf = Workflow("hang")')
    assert code == 130, out + err
    assert re.search(r"interrupted: run hang-\w+ was cancelled; `dflow-async resume hang-", err)
    assert "Traceback" not in err


# ---------------------------------------------------------------- resume

# Runs started by `python FILE.py`: the journal records the script, not an object in it.
BUILT_IN_A_FUNCTION = """
import os


@op
def fails_first(x: int) -> int:
    if os.environ.get("FAIL"):
        raise RuntimeError("failing on purpose")
    return x


def build(name):
    wf = Workflow(name)
    wf.add(Step("f", fails_first, {"x": 1}))
    return wf


MODULE_LEVEL

if __name__ == "__main__":
    print(WHICH.run(run_id="RUN_ID").status)
"""


def test_resume_of_a_script_run_finds_its_workflow_or_says_to_resume_from_python(
    tmp_path: Path,
) -> None:
    """`resume` said to "name the one to use as FILE.py:NAME", which resume does not take."""
    cases = {
        # built in a function: nothing to load; resume it from Python
        "infunc": ("", 'build("infunc")', "no Workflow object at module level"),
        # two at module level: the one of the run's name
        "two": ('first = build("first")\nsecond = build("second")', "second", None),
        "same": (
            'a = build("same")\nb = build("same")',
            "a",
            "several Workflow objects at module level (a, b), not one named 'same'",
        ),
    }
    for stem, (module_level, which, refusal) in cases.items():
        body = (
            BUILT_IN_A_FUNCTION.replace("MODULE_LEVEL", module_level)
            .replace("WHICH", which)
            .replace("RUN_ID", stem)
        )
        write(tmp_path, f"{stem}.py", body)
        env = env_for(tmp_path)
        started = subprocess.run(
            [sys.executable, f"{stem}.py"],
            cwd=tmp_path,
            env={**env, "FAIL": "1"},
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert started.stdout.strip() == "Failed", started.stdout + started.stderr
        resumed = cli(tmp_path, "resume", stem, "-q")
        if refusal is None:
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
            assert "workflow 'second' succeeded" in resumed.stdout
            continue
        assert resumed.returncode == 2
        said = " ".join(resumed.stderr.split())
        assert f"run {stem} was started from {tmp_path / (stem + '.py')}, which defines " in said
        assert refusal in said
        assert f"resume it from Python, where the workflow is built: wf.run(resume='{stem}')" in (
            said
        )
        assert "FILE.py:NAME" not in said


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_on_a_workflow_with_its_own_store_prints_a_resume_that_works(
    tmp_path: Path,
) -> None:
    """The hint after Ctrl-C was `dflow-async resume ID`, which looked for the run in
    $DFLOW_ASYNC_HOME (./.dflow-async) and did not find it."""
    import shlex

    code, out, err = interrupt_run(
        tmp_path,
        "own store.py",
        # relative: from the current directory
        'wf = Workflow("own-store", store="runs here")',
        COLUMNS="80",  # the command is not broken across lines
    )
    assert code == 130, out + err
    hint = re.search(r"`(dflow-async resume [^`]+)`", err)
    assert hint, err
    store = tmp_path / "runs here"
    argv = shlex.split(hint.group(1))
    assert argv[3:] == ["--store", str(store)], argv
    run_id = argv[2]
    assert cli(tmp_path, "get", run_id).returncode == 2  # not where the CLI looks by default
    resumed = cli(tmp_path, *argv[1:], "-q")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "workflow 'own-store' succeeded" in resumed.stdout
    listing = cli(tmp_path, "list", "--store", str(store))
    assert run_id in listing.stdout and "Succeeded" in listing.stdout
    got = cli(tmp_path, "get", run_id, "--store", "runs here")
    assert got.returncode == 0 and "hang" in got.stdout, got.stderr
    logs = cli(tmp_path, "logs", run_id, "hang", "--store", "runs here")
    assert logs.returncode == 0 and "==> hang (a0" in logs.stdout, logs.stdout + logs.stderr
    # --store is where the run is, whatever store the file names now
    store.rename(tmp_path / "moved")
    again = cli(tmp_path, "resume", run_id, "--store", "moved", "-q")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not store.exists()


# ---------------------------------------------------------------- small commands


def test_executors_and_version() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["executors"])
    assert result.exit_code == 0
    names = result.stdout.split()
    assert "inline" in names
    assert "process" in names

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_executors_subprocess(tmp_path: Path) -> None:
    proc = cli(tmp_path, "executors")
    assert proc.returncode == 0, proc.stderr
    assert {"inline", "process"} <= set(proc.stdout.split())


def test_logs_label_each_slice_attempt() -> None:
    from dflow_async._cli_runs import attempt_label

    assert attempt_label("/r/steps/fan/s3/a0.r1") == "s3/a0.r1"
    assert attempt_label("/r/steps/loop/step/a1") == "a1"


def test_get_shows_a_fan_outs_slices_apart_from_its_attempts() -> None:
    from dflow_async._cli_runs import _line
    from dflow_async._records import StepRecord

    fan = StepRecord("fan", "fan", "t", phase="Succeeded", attempts=5, slices=4, failed_slices=1)
    assert "slices=4 (1 failed) attempts=5" in _line(fan).plain
    one = StepRecord("one", "one", "t", phase="Succeeded", attempts=2)
    assert "attempts=2" in _line(one).plain and "slices" not in _line(one).plain


def test_the_progress_line_counts_a_running_fan_outs_slices() -> None:
    """A fan-out is one step (one 'running' for minutes): the line shows its slices too."""
    from rich.console import Console

    from dflow_async._cli_progress import RunProgress
    from dflow_async._records import StepRecord

    console = Console(width=200, record=True)
    progress = RunProgress("screen", console, enabled=False)
    fan = StepRecord("sim", "sim", "sim")
    fan.start = 1.0
    progress("started", fan, {})
    progress("unit_done", fan, {"slices": 3, "of": 10})
    progress("unit_done", fan, {"slices": 3, "of": 10})

    def line() -> str:
        console.print(progress.__rich__())
        return console.export_text()

    assert "1 running" in line() and "slices 6/10" in line()
    progress("succeeded", fan, {})
    shown = line()
    assert "1 done" in shown and "slices" not in shown.splitlines()[-1]


def test_a_resume_after_editing_an_op_warns_as_the_command_not_from_typer(tmp_path: Path) -> None:
    # Python pointed the warning at the caller it saw from inside the command: typer/main.py
    flow = """
    @op
    def f(x: int) -> int:
        raise ValueError("bug")

    wf = Workflow("edited")
    wf.add(Step("f", f, {"x": 1}))
    """
    write(tmp_path, "flow.py", flow)
    first = cli(tmp_path, "run", "flow.py", "-q")
    assert first.returncode == 1, first.stderr
    found = re.search(r"run id:\s+(\S+)", first.stdout)
    assert found, first.stdout
    write(tmp_path, "flow.py", flow.replace('raise ValueError("bug")', "return x"))
    resumed = cli(tmp_path, "resume", found.group(1), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: run {found.group(1)}: the code of flow.f changed since the run began" in (
        resumed.stderr
    )
    assert "typer" not in resumed.stderr and "EditedOpWarning" not in resumed.stderr
