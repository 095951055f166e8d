"""run_attempt on its own, in a worker thread that owns its cwd (as the inline executor's), and
arun_attempt (``async def`` OPs, in the event loop) on the same checks."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pytest

from dflow_async import SignatureError, current_context, op
from dflow_async._op import check_opio, port_plan
from dflow_async._spec import AttemptOutcome, AttemptSpec, Failed, SliceInput, Succeeded
from dflow_async._worker import arun_attempt, run_attempt, thread_owns_cwd
from dflow_async.testing._ops import Scale


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


def run_async(
    tmp_path: Path, the_op: Any, inputs: dict[str, Any], name: str = "a"
) -> AttemptOutcome:
    return asyncio.run(arun_attempt(attempt(tmp_path, the_op, inputs, name)))


@op
def add(x: int, y: int = 5) -> int:
    return x + y


@op
def says(x: Any) -> str:
    return x  # type: ignore[no-any-return]


@op
async def add_async(x: int, y: int = 5) -> int:
    return x + y


@op
async def says_async(x: Any) -> str:
    return x  # type: ignore[no-any-return]


# the same checks whichever way the attempt runs: a plain OP in a worker thread, an async one
# in the event loop
KINDS = [
    pytest.param((run, add, says), id="thread"),
    pytest.param((run_async, add_async, says_async), id="loop"),
]


@pytest.mark.parametrize("kind", KINDS)
def test_exactly_typed_inputs_pass_and_others_get_the_full_check(tmp_path: Path, kind) -> None:
    run_op, add_op, _ = kind
    out = run_op(tmp_path, add_op, {"x": 1, "y": 2})
    assert isinstance(out, Succeeded) and out.outputs == ({"result": 3},)
    out = run_op(tmp_path, add_op, {"x": 1})  # a default filled in
    assert isinstance(out, Succeeded) and out.outputs == ({"result": 6},)
    out = run_op(tmp_path, add_op, {"x": True, "y": 1})  # a bool is an int: accepted, not exact
    assert isinstance(out, Succeeded) and out.outputs == ({"result": 2},)


@pytest.mark.parametrize(
    ("inputs", "direction"),
    [
        ({"x": "one", "y": 2}, "input"),  # wrong type
        ({"x": 1, "y": 2, "z": 3}, "input"),  # undeclared
        ({"y": 2}, "input"),  # missing
        ({"x": 1, "y": None}, "input"),  # None for an int, though the port has a default
        ({"x": 1, "y": 2}, None),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_signature_errors_read_as_check_opio_words_them(
    tmp_path: Path, inputs: dict[str, Any], direction: str | None, kind
) -> None:
    run_op, add_op, _ = kind
    plan = port_plan(add_op)
    out = run_op(tmp_path, add_op, inputs)
    if direction is None:
        assert out.ok
        return
    with pytest.raises(SignatureError) as expected:
        check_opio(plan.inputs, inputs, op=plan.name, direction=direction)
    assert isinstance(out, Failed) and out.kind == "fatal"
    assert out.error == f"SignatureError: {expected.value}"


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_of_the_wrong_type_are_refused(tmp_path: Path, kind) -> None:
    run_op, _, says_op = kind
    out = run_op(tmp_path, says_op, {"x": 3})
    assert isinstance(out, Failed) and out.kind == "fatal"
    assert "output parameter 'result' expects str, got int (3)" in out.error
    out = run_op(tmp_path, says_op, {"x": "fine"})
    assert isinstance(out, Succeeded) and out.outputs == ({"result": "fine"},)


def test_a_class_ops_outputs_come_back_as_a_plain_dict_of_its_own(tmp_path: Path) -> None:
    inputs = {"x": 4.0, "factor": 2.0}
    out = run(tmp_path, Scale(), inputs)
    assert isinstance(out, Succeeded) and out.outputs == ({"y": 8.0},)
    assert type(out.outputs[0]) is dict  # not the OPIO execute() returned
    assert inputs == {"x": 4.0, "factor": 2.0}  # the given inputs are never written to


def test_a_plain_op_that_returns_an_awaitable_is_awaited(tmp_path: Path) -> None:
    async def later(x: int) -> int:
        return x + 1

    @op
    def deferred(x: int) -> int:
        return later(x)  # type: ignore[return-value]

    out = run(tmp_path, deferred, {"x": 1})
    assert isinstance(out, Succeeded) and out.outputs == ({"result": 2},)


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


def test_none_passes_only_where_the_type_or_the_default_allows_it() -> None:
    from dflow_async import Artifact, Parameter

    ports = {
        "maybe": Parameter(int | None, default=0),
        "defaults_to_none": Parameter(int, default=None),
        "optional_file": Artifact(Path, optional=True),
    }
    values = {"maybe": None, "defaults_to_none": None, "optional_file": None}
    assert check_opio(ports, values, op="o", direction="input") == values
    with pytest.raises(SignatureError, match=r"input parameter 'n' expects int, got NoneType"):
        check_opio({"n": Parameter(int, default=0)}, {"n": None}, op="o", direction="input")


class Partial(TypedDict, total=False):
    a: int
    b: str


class Mixed(TypedDict):
    a: int
    b: NotRequired[str]


@op
def partial(n: int) -> Partial:
    return {"a": n}


@op
def mixed(n: int) -> Mixed:
    return {"a": n} if n else {}  # type: ignore[typeddict-item]


def test_typeddict_keys_an_op_may_leave_out_read_as_none(tmp_path: Path) -> None:
    out = run(tmp_path, partial, {"n": 1}, "partial")
    assert isinstance(out, Succeeded) and out.outputs == ({"a": 1, "b": None},)
    out = run(tmp_path, mixed, {"n": 2}, "mixed")
    assert isinstance(out, Succeeded) and out.outputs == ({"a": 2, "b": None},)
    out = run(tmp_path, mixed, {"n": 0}, "mixed-empty")  # 'a' is required
    assert isinstance(out, Failed) and "output 'a' is required but missing" in out.error


@op
def interrupts(what: str) -> int:
    raise {"kbi": KeyboardInterrupt, "cancel": asyncio.CancelledError}[what]()


@op
async def interrupts_async(what: str) -> int:
    raise {"kbi": KeyboardInterrupt, "cancel": asyncio.CancelledError}[what]()


@pytest.mark.parametrize("what", ["kbi", "cancel"])
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param((run, interrupts), id="thread"),
        pytest.param((run_async, interrupts_async), id="loop"),
    ],
)
def test_an_op_raising_keyboardinterrupt_or_cancellederror_fails_its_step(
    tmp_path: Path, what: str, kind: Any
) -> None:
    """Raised by the OP itself (no Ctrl-C, no cancellation of the attempt), they fail the step
    like any error: in a worker thread they used to kill the thread and hang the run."""
    run_op, the_op = kind
    out = run_op(tmp_path, the_op, {"what": what})
    assert isinstance(out, Failed) and out.kind == "user"
    assert out.error.startswith(("KeyboardInterrupt", "CancelledError"))


@op
def unannotated(x):  # type: ignore[no-untyped-def]
    return x * 2


def test_an_op_without_a_return_annotation_is_told_to_add_one(tmp_path: Path) -> None:
    out = run(tmp_path, unannotated, {"x": 2})
    assert isinstance(out, Failed)
    assert "returned int but declares no outputs: annotate its return (-> int" in out.error


def test_run_attempt_refuses_to_move_a_cwd_other_threads_share(tmp_path: Path) -> None:
    # a plugin that ran plain run_attempt(spec) on a ThreadPoolExecutor moved the driver's own
    # current directory into the run's scratch directory, and left it there
    spec = attempt(tmp_path, Scale(), {"x": 2, "factor": 3})
    here = os.getcwd()
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(run_attempt(spec)))
    t.start()
    t.join()
    (outcome,) = box
    assert isinstance(outcome, Failed) and outcome.kind == "infra"
    assert outcome.error.startswith("run_attempt(spec) was called on a thread that shares the")
    assert "thread_owns_cwd()" in outcome.error and "chdir=False" in outcome.error
    assert os.getcwd() == here
    # what it says to do works: chdir=False on a shared thread, or a thread of its own
    box.clear()
    t = threading.Thread(target=lambda: box.append(run_attempt(spec, chdir=False)))
    t.start()
    t.join()
    assert isinstance(box[0], Succeeded), box[0]
    assert isinstance(run(tmp_path, Scale(), {"x": 2, "factor": 3}, name="b"), Succeeded)
    assert os.getcwd() == here
