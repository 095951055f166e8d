"""What a run remembers about each step: the records users query."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Phase", "StepOutputValues", "StepRecord"]

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped", "Cancelled"]
DONE_PHASES = frozenset({"Succeeded", "Failed", "Skipped", "Cancelled"})


@dataclass(slots=True)
class StepOutputValues:
    """``record.outputs.parameters["x"]`` (values) and ``.artifacts["y"]`` (local paths)."""

    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class StepRecord:
    """One execution of one step (a fan-out step is one record; its outputs are lists)."""

    name: str
    path: str  # unique in the run: "loop/next/plus1"
    template: str  # the OP's or Steps/DAG's name
    key: str | None = None
    phase: Phase = "Pending"
    outputs: StepOutputValues = field(default_factory=StepOutputValues)
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    slices: int | None = None  # number of slices of a fan-out step
    failed_slices: int = 0
    workdirs: list[str] = field(default_factory=list)
    cached: bool = False  # outputs came from the step cache; the OP did not run

    @property
    def duration(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start

    @property
    def error(self) -> str | None:
        return self.errors[-1] if self.errors else None

    def modify_output_parameter(self, name: str, value: Any) -> StepRecord:
        """Change an output before reusing this record (``reuse_step=``), as in Dflow."""
        self.outputs.parameters[name] = value
        return self

    def modify_output_artifact(self, name: str, artifact: Any) -> StepRecord:
        """Point an output artifact elsewhere before reusing this record."""
        self.outputs.artifacts[name] = artifact
        return self

    def artifact_paths(self, name: str) -> list[Path]:
        from dflow_async._op import artifact_paths

        return artifact_paths(self.outputs.artifacts.get(name))

    def __repr__(self) -> str:
        key = f" key={self.key!r}" if self.key else ""
        return f"<StepRecord {self.path!r}{key} {self.phase}>"
