"""What a run remembers about each step: the records users query."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Phase", "StepOutputValues", "StepRecord"]

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped", "Cancelled"]
DONE_PHASES = frozenset({"Succeeded", "Failed", "Skipped", "Cancelled"})


@dataclass(slots=True, init=False)
class StepOutputValues:
    """``record.outputs.parameters["x"]`` (values) and ``.artifacts["y"]`` (local paths)."""

    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self, parameters: dict[str, Any] | None = None, artifacts: dict[str, Any] | None = None
    ) -> None:
        # written out: one per step record, and default factories make the generated one slow
        self.parameters = {} if parameters is None else parameters
        self.artifacts = {} if artifacts is None else artifacts


@dataclass(slots=True, eq=False, init=False)
class StepRecord:
    """One execution of one step (a fan-out step is one record; its outputs are lists)."""

    name: str
    path: str  # unique in the run: "loop/next/plus1"
    template: str  # the OP's or Steps/DAG's name
    key: str | None
    phase: Phase
    outputs: StepOutputValues
    attempts: int
    errors: list[str]
    start: float | None
    end: float | None
    slices: int | None  # number of slices of a fan-out step
    failed_slices: int
    workdirs: list[str]
    cached: bool  # outputs came from the step cache; the OP did not run

    def __init__(
        self,
        name: str,
        path: str,
        template: str,
        key: str | None = None,
        phase: Phase = "Pending",
        outputs: StepOutputValues | None = None,
        attempts: int = 0,
        errors: list[str] | None = None,
        start: float | None = None,
        end: float | None = None,
        slices: int | None = None,
        failed_slices: int = 0,
        workdirs: list[str] | None = None,
        cached: bool = False,
    ) -> None:
        # written out: the scheduler builds one per step, and the generated __init__ with its
        # default factories costs half as much again
        self.name = name
        self.path = path
        self.template = template
        self.key = key
        self.phase = phase
        self.outputs = StepOutputValues() if outputs is None else outputs
        self.attempts = attempts
        self.errors = [] if errors is None else errors
        self.start = start
        self.end = end
        self.slices = slices
        self.failed_slices = failed_slices
        self.workdirs = [] if workdirs is None else workdirs
        self.cached = cached

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
