# ruff: noqa: UP006, UP035  (Dflow code: typing.List and friends)
"""OPs written against the real pydflow (``dflow.python``), unchanged Dflow code.

Imported only by tests that first checked pydflow is installed. No ``from __future__ import
annotations``: ``OP.function`` reads the annotations as objects, as in any Dflow package.
"""

import time
from pathlib import Path
from typing import Dict, List, Set

from dflow.python import (
    OP,
    OPIO,
    Artifact,
    BigParameter,
    FatalError,
    OPIOSign,
    Parameter,
    TransientError,
)


class Payload:
    def __init__(self, msg):
        self.msg = msg


class MakeFiles(OP):
    def __init__(self):
        pass

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({"n": Parameter(int, default=2), "msg": str})

    @classmethod
    def get_output_sign(cls):
        return OPIOSign(
            {
                "files": Artifact(List[Path]),
                "names": List[str],
                "first": Artifact(str),
                "by_name": Artifact(Dict[str, Path]),
            }
        )

    @OP.exec_sign_check
    def execute(self, op_in):
        files = []
        for i in range(op_in["n"]):
            path = Path(f"task.{i:04d}") / "POSCAR"
            path.parent.mkdir()
            path.write_text(op_in["msg"] * (i + 1))
            files.append(path)
        return OPIO(
            {
                "files": files,
                "names": [str(f) for f in files],
                "first": str(files[0]),
                "by_name": {f.parent.name: f for f in files},
            }
        )


class Inspect(OP):
    """Reports the Python types Dflow hands it, and the data."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign(
            {
                "as_strs": Artifact(List[str]),
                "as_set": Artifact(Set[Path]),
                "as_dir": Artifact(Path),
                "as_dict": Artifact(Dict[str, str]),
                "one": Artifact(str),
                "missing": Artifact(Path, optional=True),
                "big": BigParameter(Payload),
            }
        )

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"kinds": List[str], "text": str, "big": BigParameter(Payload)})

    @OP.exec_sign_check
    def execute(self, op_in):
        kinds = [
            type(op_in["as_strs"][0]).__name__,
            type(op_in["as_set"]).__name__,
            type(op_in["as_dir"]).__name__,
            type(next(iter(op_in["as_dict"].values()))).__name__,
            type(op_in["one"]).__name__,
            type(op_in["missing"]).__name__,
        ]
        listing = sorted(
            str(p.relative_to(op_in["as_dir"])) for p in op_in["as_dir"].rglob("POSCAR")
        )
        text = "|".join(listing) + "|" + Path(op_in["one"]).read_text()
        return OPIO({"kinds": kinds, "text": text, "big": Payload(op_in["big"].msg * 2)})


class Flaky(OP):
    """Raises pydflow's TransientError until ``marker`` has counted ``tries`` calls."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({"marker": str, "tries": int, "fatal": Parameter(bool, default=False)})

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"calls": int})

    @OP.exec_sign_check
    def execute(self, op_in):
        marker = Path(op_in["marker"])
        calls = (int(marker.read_text()) if marker.exists() else 0) + 1
        marker.write_text(str(calls))
        if op_in["fatal"]:
            raise FatalError("no point retrying")
        if calls <= op_in["tries"]:
            raise TransientError("try again")
        return OPIO({"calls": calls})


class Sleep(OP):
    @classmethod
    def get_input_sign(cls):
        return OPIOSign({"seconds": float})

    @classmethod
    def get_output_sign(cls):
        return OPIOSign()

    def execute(self, op_in):
        time.sleep(op_in["seconds"])
        return OPIO()


@OP.function
def add(a: int, b: int = 10) -> {"sum": int}:
    return {"sum": a + b}
