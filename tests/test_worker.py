"""run_attempt on its own, in a worker thread that owns its cwd (as the inline executor's)."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dflow_async import current_context, op
from dflow_async._spec import AttemptOutcome, AttemptSpec, SliceInput, Succeeded
from dflow_async._worker import run_attempt, thread_owns_cwd


def in_worker_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a fresh thread that owns its cwd, as the inline executor's workers do."""
    box: list[Any] = []

    def main() -> None:
        assert thread_owns_cwd()
        box.append(fn())

    t = threading.Thread(target=main)
    t.start()
    t.join()
    return box[0]


def attempt(tmp_path: Path, the_op: Any, inputs: dict[str, Any], name: str = "a") -> AttemptSpec:
    return AttemptSpec(
        f"{name}#0@0",
        "r",
        name,
        None,
        0,
        the_op,
        (SliceInput(None, inputs, str(tmp_path / "w" / name)),),
        run_dir=str(tmp_path),
    )


def run(tmp_path: Path, the_op: Any, inputs: dict[str, Any], name: str = "a") -> AttemptOutcome:
    spec = attempt(tmp_path, the_op, inputs, name)
    return in_worker_thread(lambda: run_attempt(spec, chdir=True))  # type: ignore[no-any-return]


def test_printing_opens_the_attempts_log_and_silence_opens_nothing(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    @op
    def quiet(x: int) -> int:
        seen["log"] = current_context().log
        return x

    @op
    def loud(x: int) -> int:
        print(f"loud {x}")
        seen["log"] = current_context().log
        return x

    assert run(tmp_path, quiet, {"x": 1}, "q").ok
    assert seen["log"] is None  # no log object either: nothing was written
    assert not (tmp_path / "w" / "q.log").exists()
    assert run(tmp_path, loud, {"x": 2}, "l").ok
    assert seen["log"] is not None
    assert (tmp_path / "w" / "l.log").read_text() == "loud 2\n"


def test_output_reaches_the_log_after_sys_stdout_was_replaced(tmp_path: Path) -> None:
    @op
    def loud(x: int) -> int:
        print(f"loud {x}")
        return x

    elsewhere = io.StringIO()
    with contextlib.redirect_stdout(elsewhere):  # a new sys.stdout: routed again
        assert run(tmp_path, loud, {"x": 3}, "r").ok
    assert (tmp_path / "w" / "r.log").read_text() == "loud 3\n"
    assert elsewhere.getvalue() == ""


def test_the_context_names_the_attempt_and_its_directory(tmp_path: Path) -> None:
    @op
    def where(x: int) -> {"step": str, "cwd": str, "workdir": str}:  # type: ignore[valid-type]
        ctx = current_context()
        Path("made.txt").write_text("x")
        return {"step": ctx.step, "cwd": os.getcwd(), "workdir": str(ctx.workdir)}

    out = run(tmp_path, where, {"x": 1}, "ctx")
    assert isinstance(out, Succeeded)
    (values,) = out.outputs
    assert values["step"] == "ctx" and values["cwd"] == values["workdir"]
    # what it wrote moved to its work dir
    assert (tmp_path / "w" / "ctx" / "made.txt").read_text() == "x"
