"""Value objects that cross the scheduler/executor boundary.

An executor receives an :class:`AttemptSpec` and returns an :class:`AttemptOutcome`. Both are
picklable values, so every transport (a thread, a process pipe, Dask, Ray, a pod) moves the
same bytes and behaves the same. They are treated as immutable but not declared
``frozen=True``: a frozen dataclass costs about 4x more to construct (``object.__setattr__``
per field), and several are built for every step on the scheduler's hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AttemptOutcome",
    "AttemptSpec",
    "Failed",
    "FailureKind",
    "SliceInput",
    "Succeeded",
]

#: Why an attempt failed. ``user``: the OP raised; ``transient``/``fatal``: the OP raised
#: TransientError/FatalError; ``infra``: the worker died (killed, out of memory, os._exit) or
#: the transport broke; ``timeout``: the step's timeout expired; ``cancelled``: the run was
#: cancelled.
FailureKind = Literal["user", "transient", "fatal", "infra", "timeout", "cancelled"]


@dataclass(slots=True, init=False)
class SliceInput:
    """What one slice of an attempt needs: its inputs and the directory it runs in."""

    index: int | None  # slice index within a fan-out, None for a plain step
    inputs: dict[str, Any]  # parameter values and artifact local paths, by port name
    workdir: str  # absolute; created by the worker if missing

    def __init__(self, index: int | None, inputs: dict[str, Any], workdir: str) -> None:
        # written out (here and below): one is built per step, and the generated __init__
        # costs more
        self.index = index
        self.inputs = inputs
        self.workdir = workdir


@dataclass(slots=True, init=False)
class AttemptSpec:
    """One attempt of one step (a group of slices when ``group_size`` batches them)."""

    attempt_id: str  # unique per run: "<step path>#<unit>@<attempt>"
    run_id: str
    step: str  # the step's path in the run, e.g. "loop/next/plus1"
    key: str | None
    attempt: int  # 0 for the first try
    op: Any  # an OP instance; Any because executors may also carry it as pickled bytes
    slices: tuple[SliceInput, ...]
    timeout: float | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""  # where scratch directories live (same filesystem as the work dirs)
    store: Any = None  # the ArtifactStore outputs are committed to (pickles as its URL)

    def __init__(
        self,
        attempt_id: str,
        run_id: str,
        step: str,
        key: str | None,
        attempt: int,
        op: Any,
        slices: tuple[SliceInput, ...],
        timeout: float | None = None,
        resources: dict[str, Any] | None = None,
        run_dir: str = "",
        store: Any = None,
    ) -> None:
        self.attempt_id = attempt_id
        self.run_id = run_id
        self.step = step
        self.key = key
        self.attempt = attempt
        self.op = op
        self.slices = slices
        self.timeout = timeout
        self.resources = {} if resources is None else resources
        self.run_dir = run_dir
        self.store = store


@dataclass(slots=True, init=False)
class Succeeded:
    """The attempt ran every slice; ``outputs`` holds one mapping per slice, in order."""

    outputs: tuple[dict[str, Any], ...]
    duration: float = 0.0

    def __init__(self, outputs: tuple[dict[str, Any], ...], duration: float = 0.0) -> None:
        self.outputs = outputs
        self.duration = duration

    @property
    def ok(self) -> bool:
        return True


@dataclass(slots=True, kw_only=True)
class Failed:
    """The attempt failed. ``retryable`` is the worker's view; the scheduler's policy decides."""

    kind: FailureKind
    error: str  # one line: "ValueError: bad input"
    traceback: str = ""
    retryable: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return False


AttemptOutcome = Succeeded | Failed


def outcome_problem(spec: AttemptSpec, outcome: Any) -> str | None:
    """Why ``outcome``, brought back by an executor, is not a well-formed outcome of
    ``spec`` (None: it is). The scheduler fails the attempt (``infra``) on one that is not,
    and the conformance suite fails the executor."""
    what = f"returned {outcome!r:.200} for attempt {spec.attempt_id!r}"
    if isinstance(outcome, Failed):
        return None
    if not isinstance(outcome, Succeeded):
        return f"{what}: an outcome is a dflow_async Succeeded or Failed"
    outputs = outcome.outputs
    if not isinstance(outputs, tuple) or len(outputs) != len(spec.slices):
        count = len(outputs) if isinstance(outputs, tuple) else type(outputs).__name__
        return (
            f"{what}: Succeeded.outputs must be a tuple of one mapping per slice "
            f"({len(spec.slices)}), got {count}"
        )
    ports = getattr(spec.op, "output_ports", None)  # the OP, unless the spec carries bytes
    required = {n for n, port in ports().items() if not _optional(port)} if ports else set()
    for values in outputs:
        missing = sorted(required - set(values)) if isinstance(values, dict) else None
        if missing is None or missing:
            lack = missing or "a dict"
            return f"{what}: its outputs lack {lack}; bring back what run_attempt returned"
    return None


def _optional(port: Any) -> bool:
    return bool(getattr(port, "optional", False))
