"""OPs used by the conformance suite. They live in an importable module so that every
executor (threads, processes, Dask workers, Ray actors, pods) can load them by reference."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from dflow_async._op import OP, OPIO, Artifact, OPIOSign, current_context, op


@op
def add(x: int, y: int = 1) -> int:
    return x + y


@op
def square(x: int) -> int:
    return x * x


@op
def total(xs: list[int]) -> int:
    return sum(xs)


@op
def fail_with_value_error(x: int) -> int:
    raise ValueError(f"bad input {x}")


@op
def die_once(marker_dir: str) -> int:
    """Kills its own process on the first attempt (a worker lost mid-step), succeeds after."""
    marker = Path(marker_dir) / "died"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return current_context().attempt


@op
def hang(marker_dir: str, seconds: float = 20.0) -> int:
    """Records its pid, then sleeps until released (a file appears) or ``seconds`` pass."""
    Path(marker_dir, f"pid-{os.getpid()}-{threading.get_ident()}").write_text("")
    release = Path(marker_dir) / "release"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not release.exists():
        time.sleep(0.02)
    return 0


@op
def write_tree(n: int) -> {"tree": Artifact(Path), "first": Artifact(Path)}:  # type: ignore[valid-type,misc]
    root = Path("tree")
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        (root / "sub" / f"f{i}.txt").write_text(f"line {i}\n")
    Path("first.txt").write_text("first\n")
    return {"tree": root, "first": Path("first.txt")}


@op
def read_tree(tree: Artifact(Path), first: Artifact(Path)) -> {"lines": list[str], "cwd_ok": bool}:  # type: ignore[valid-type,misc]
    lines = [p.read_text().strip() for p in sorted((tree / "sub").iterdir())]
    lines.append(first.read_text().strip())
    # the OP runs in its own fresh work directory, as promised to every executor
    cwd_ok = Path.cwd().resolve() == current_context().workdir.resolve()
    return {"lines": lines, "cwd_ok": cwd_ok}


class Scale(OP):
    """A class-style OP, as Dflow users write them."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"x": float, "factor": float})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"y": float})

    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"y": op_in["x"] * op_in["factor"]})


class HoldsLock(OP):
    """Cannot be pickled: executors that ship OPs to other processes must refuse it up front."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"x": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"x": int})

    def execute(self, op_in: OPIO) -> OPIO:
        with self.lock:
            return OPIO({"x": op_in["x"]})
