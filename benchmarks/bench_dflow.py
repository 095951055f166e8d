"""Dflow compatibility benchmark: one sliced workflow through pydflow's debug mode and
through dflow-async's compatibility layer, in the same run.

    python benchmarks/bench_dflow.py [--slices 200] [--repeat 1] [--executors inline,process]
                                     [--json FILE]

The workflow is Dflow's classic shape: a ``PythonOPTemplate`` with ``Slices`` indexed by the
item over ``argo_range(n)`` (each slice squares its number and writes it to a file), then a
reduce step that takes the stacked parameters and the list of files. The OPs are written once,
against pydflow's ``dflow.python.OP`` (an unchanged OP package); the workflow is built by one
function given either ``dflow`` or ``dflow_async.dflow``, which is the only difference between
the two runs. Wall time is ``submit()`` until the workflow has ended, best of ``--repeat``.
Needs pydflow installed (``pip install pydflow``; it runs here in debug mode: no Argo).

pydflow's debug mode runs an OP defined in ``__main__`` by pasting this file's source up to the
class into a script, whose placeholders it renders: keep double braces out of the lines above
the OP classes, and no ``from __future__`` import (it must come first in a file).
"""

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, List  # noqa: UP035 (Dflow's artifact types)

from dflow.python import OP, OPIO, Artifact, OPIOSign


class Square(OP):
    """One slice: square ``x``, write it to a file."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({"x": int})

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"y": int, "out": Artifact(Path)})

    @OP.exec_sign_check
    def execute(self, op_in):
        y = op_in["x"] * op_in["x"]
        out = Path(f"square-{op_in['x']}.txt")  # slices share one output tree in Dflow
        out.write_text(str(y))
        return OPIO({"y": y, "out": out})


class Reduce(OP):
    """Sum the stacked parameters and the files; both must agree."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({"ys": list, "files": Artifact(List[Path])})  # noqa: UP006 (Dflow's types)

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"total": int})

    @OP.exec_sign_check
    def execute(self, op_in):
        ys = [int(y) for y in op_in["ys"]]  # Dflow's debug mode stacks them as JSON text
        from_files = sum(int(Path(f).read_text()) for f in op_in["files"])
        if sum(ys) != from_files:
            raise ValueError(f"parameters say {sum(ys)}, files say {from_files}")
        return OPIO({"total": from_files})


HERE = Path(__file__).resolve().parent


def build(dflow: Any, dflow_python: Any, n: int, name: str, **wf_kwargs: Any) -> Any:
    """The workflow, from either API (module objects passed in)."""
    square = dflow.Step(
        "square",
        dflow_python.PythonOPTemplate(
            Square,
            image="python:3.11",
            slices=dflow_python.Slices(
                "{{item}}", input_parameter=["x"], output_parameter=["y"], output_artifact=["out"]
            ),
        ),
        parameters={"x": list(range(n))},
        with_param=dflow.argo_range(n),
    )
    reduce = dflow.Step(
        "reduce",
        dflow_python.PythonOPTemplate(Reduce, image="python:3.11"),
        parameters={"ys": square.outputs.parameters["y"]},
        artifacts={"files": square.outputs.artifacts["out"]},
    )
    wf = dflow.Workflow(name, **wf_kwargs)
    wf.add(square)
    wf.add(reduce)
    return wf


def run(dflow: Any, dflow_python: Any, n: int, name: str, **wf_kwargs: Any) -> tuple[float, Any]:
    wf = build(dflow, dflow_python, n, name, **wf_kwargs)
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with quiet[0], quiet[1]:  # both print per workflow / per step; pydflow prints tracebacks
        t0 = time.perf_counter()
        wf.submit()  # pydflow debug mode: blocks until the end; dflow-async: returns at once
        while wf.query_status() in ("Pending", "Running"):
            wf.wait() if hasattr(wf, "wait") else time.sleep(0.01)
        wall = time.perf_counter() - t0
    status = wf.query_status()
    if status != "Succeeded":
        raise RuntimeError(f"{name}: workflow ended {status}")
    total = wf.query_step(name="reduce")[0].outputs.parameters["total"].value
    return wall, int(total)


def lock_children_reads() -> None:
    """pydflow's debug mode writes each step group's ``children`` file under a file lock but
    reads it without one: with a wide fan-out a slice now and then reads a half-written file
    and the workflow fails (JSONDecodeError). Reads take the same lock here, so pydflow
    completes; its slices run in forked processes, which inherit the patch."""
    import dflow.step
    from filelock import FileLock

    original = dflow.step.Step.get_children

    def get_children(self: Any, scope: Any, order: Any) -> Any:
        stepdir = getattr(scope, "stepdir", None)
        if stepdir is None:
            return original(self, scope, order)
        with FileLock(os.path.join(stepdir, "children") + ".lock"):
            return original(self, scope, order)

    dflow.step.Step.get_children = get_children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--executors", default="inline,process")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--tries",
        type=int,
        default=3,
        help="runs per measurement before giving up (a failed run is reported, not timed)",
    )
    args = parser.parse_args()
    if importlib.util.find_spec("dflow_async") is None:
        sys.path.insert(0, str(HERE.parent / "src"))
    import dflow
    import dflow.python

    import dflow_async.dflow
    import dflow_async.dflow.python

    expected = sum(i * i for i in range(args.slices))
    results: dict[str, float] = {}
    failures: dict[str, int] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-dflow-"))
    cwd = os.getcwd()
    try:
        os.chdir(work)  # both write their runs under the current directory
        dflow.config["mode"] = "debug"
        lock_children_reads()
        runners: list[tuple[str, Any, Any, dict[str, Any]]] = [
            ("pydflow-debug", dflow, dflow.python, {})
        ]
        for ex in args.executors.split(","):
            runners.append(
                (
                    f"dflow-async-{ex}",
                    dflow_async.dflow,
                    dflow_async.dflow.python,
                    {"executor": ex, "store": str(work / ".dflow-async")},
                )
            )
        for label, mod, pymod, kwargs in runners:
            best = float("inf")
            failed = 0
            for i in range(args.repeat):
                while True:
                    try:
                        wall, total = run(mod, pymod, args.slices, f"bench-{i}-{failed}", **kwargs)
                    except RuntimeError as exc:
                        failed += 1
                        if failed >= args.tries:
                            raise
                        print(f"{label}: {exc}; running it again", file=sys.stderr, flush=True)
                        continue
                    break
                if total != expected:
                    raise AssertionError(f"{label}: reduce gave {total}, expected {expected}")
                best = min(best, wall)
            results[label] = best
            failures[label] = failed
            note = f", {failed} failed run(s) before" if failed else ""
            print(f"{label:24s} {best:8.3f} s  ({args.slices} slices + reduce{note})", flush=True)
    finally:
        os.chdir(cwd)
    base = results["pydflow-debug"]
    print()
    for label, wall in results.items():
        if label != "pydflow-debug":
            print(f"pydflow-debug / {label}: {base / wall:.1f}x faster")
    if args.json is not None:
        figures = {
            "slices": args.slices,
            "repeat": args.repeat,
            "walls_s": results,
            "failed_runs": failures,
            "ratios": {k: base / v for k, v in results.items() if k != "pydflow-debug"},
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "pydflow": importlib.metadata.version("pydflow"),
        }
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
