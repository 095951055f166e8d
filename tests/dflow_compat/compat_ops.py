# ruff: noqa: UP006, UP007, UP035  (Dflow code: typing.List, Union and friends)
"""OPs written against ``dflow_async.dflow.python`` (module level: process workers import them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Union

from dflow_async.dflow.python import (
    OP,
    OPIO,
    Artifact,
    BigParameter,
    HDF5Datasets,
    OPIOSign,
    Parameter,
    TransientError,
)


class Plus1(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"iter": int})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"iter": op_in["iter"] + 1})


class Square(OP):
    """Squares ``x``; writes it to ``sq/<x>.txt``; records its key and an env variable."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"x": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"y": int, "key": Parameter(str, default=""), "out": Artifact(Path)})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        out = Path("sq") / f"{op_in['x']}.txt"
        out.parent.mkdir()
        out.write_text(str(op_in["x"] ** 2))
        return OPIO({"y": op_in["x"] ** 2, "key": str(self.key), "out": out})


class Sum(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"ys": List[int], "files": Artifact(List[Path], optional=True)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"total": int, "from_files": int})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        files = op_in["files"] or []
        return OPIO(
            {"total": sum(op_in["ys"]), "from_files": sum(int(f.read_text()) for f in files)}
        )


class Echo(OP):
    """Returns ``value`` and the environment variable ``name``."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign(
            {"value": Parameter(object, default=None), "name": Parameter(str, default="")}
        )

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"value": object, "env": str})

    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"value": op_in["value"], "env": os.environ.get(op_in["name"], "")})


class FailIf(OP):
    """Fails when ``x`` is in ``bad``; a TransientError until ``marker`` has seen ``tries``."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign(
            {
                "x": int,
                "bad": Parameter(list, default=[]),
                "marker": Parameter(str, default=""),
                "tries": Parameter(int, default=0),
            }
        )

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"x": int})

    def execute(self, op_in: OPIO) -> OPIO:
        if op_in["marker"]:
            marker = Path(op_in["marker"])
            seen = int(marker.read_text()) if marker.exists() else 0
            marker.write_text(str(seen + 1))
            if seen < op_in["tries"]:
                raise TransientError(f"try {seen}")
        if op_in["x"] in op_in["bad"]:
            raise ValueError(f"bad x {op_in['x']}")
        return OPIO({"x": op_in["x"]})


class WriteUnlessBad(OP):
    """Writes ``out/<x>.txt`` and returns it; fails when ``x`` is in ``bad``."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"x": int, "bad": Parameter(list, default=[])})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"out": Artifact(Path)})

    def execute(self, op_in: OPIO) -> OPIO:
        if op_in["x"] in op_in["bad"]:
            raise ValueError(f"bad x {op_in['x']}")
        out = Path("out") / f"{op_in['x']}.txt"
        out.parent.mkdir()
        out.write_text(f"x={op_in['x']}")
        return OPIO({"out": out})


class Files(OP):
    """Writes ``n`` files ``task.<i>/data.txt`` and returns them as a list artifact."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"n": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"files": Artifact(List[Path]), "names": List[str]})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        files = []
        for i in range(op_in["n"]):
            path = Path(f"task.{i}") / "data.txt"
            path.parent.mkdir()
            path.write_text(f"data {i}")
            files.append(path)
        return OPIO({"files": files, "names": [str(f) for f in files]})


class Cat(OP):
    """Reads one file (``Artifact(str)``) or a directory of them (``Artifact(Path)``)."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign(
            {"file": Artifact(str, optional=True), "dir": Artifact(Path, optional=True)}
        )

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"text": str, "kinds": List[str]})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        parts, kinds = [], [type(op_in["file"]).__name__, type(op_in["dir"]).__name__]
        if op_in["file"] is not None:
            parts.append(Path(op_in["file"]).read_text())
        if op_in["dir"] is not None:
            parts += [
                f"{p.relative_to(op_in['dir'])}={p.read_text()}"
                for p in sorted(op_in["dir"].rglob("*.txt"))
            ]
        return OPIO({"text": ";".join(parts), "kinds": kinds})


class Where(OP):
    """Where its ``Artifact(Path)`` input sits: ``<parent directory>/<name>``."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"file": Artifact(Path)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"where": str})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"where": f"{op_in['file'].parent.name}/{op_in['file'].name}"})


class WriteSame(OP):
    """Writes ``x`` to ``out.txt``: slices of it all return a file of the same name."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"x": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"out": Artifact(Path)})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        Path("out.txt").write_text(str(op_in["x"]))
        return OPIO({"out": Path("out.txt")})


class Label(OP):
    """``name`` (a str port) as ``label-<name>``: a non-str value fails its sign check."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"name": str})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"label": str})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"label": f"label-{op_in['name']}"})


class Nones(OP):
    """Shows what it was given; returns None for a typed output, as Dflow OPs may."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"n": int, "report": BigParameter(dict), "trajs": Artifact(List[Path])})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"given": str, "n": int})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        given = (op_in["n"], op_in["report"], op_in["trajs"])
        return OPIO({"given": repr(given), "n": None})


class Trajs(OP):
    """dpgen2's ``trajs``: files, or HDF5 datasets (``Union[List[Path], HDF5Datasets]``)."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"trajs": Artifact(Union[List[Path], HDF5Datasets])})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"texts": List[str]})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"texts": [Path(p).read_text() for p in op_in["trajs"]]})


class Train(OP):
    """dpgen2's run-train, shrunk: an optional initial model per slice."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"i": int, "init_model": Artifact(Path, optional=True)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"o": str})

    @OP.exec_sign_check
    def execute(self, op_in: OPIO) -> OPIO:
        model = op_in["init_model"]
        return OPIO({"o": f"{op_in['i']}:{Path(model).read_text() if model else None}"})
