"""What a run remembers about each step: the records users query."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from dflow_async._stored import BigValue, holds_big, with_values

__all__ = ["Phase", "StepOutputValues", "StepRecord", "name_outputs"]

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped", "Cancelled"]
PHASES: tuple[str, ...] = get_args(Phase)
DONE_PHASES = frozenset({"Succeeded", "Failed", "Skipped", "Cancelled"})


class StepOutputValues:
    """``record.outputs.parameters["x"]`` (values) and ``.artifacts["y"]`` (local paths).

    A ``BigParameter`` output stays in the artifact store; the record keeps a reference to it
    (``raw_parameters``: what steps pass on and the journal keeps), and ``parameters`` gives
    its value, loaded from the store when read.
    """

    __slots__ = ("_parameters", "artifacts")

    def __init__(
        self, parameters: dict[str, Any] | None = None, artifacts: dict[str, Any] | None = None
    ) -> None:
        # written out: one per step record, and default factories make a generated one slow
        self._parameters = {} if parameters is None else parameters
        self.artifacts = {} if artifacts is None else artifacts

    @property
    def parameters(self) -> dict[str, Any]:
        raw = self._parameters
        for value in raw.values():
            if _has_big(value):
                loaded = {n: _loaded(v) for n, v in raw.items()}
                if type(raw) is _NamedParameters:
                    return _named(_NamedParameters, loaded, raw.about)
                return loaded
        return raw

    @parameters.setter
    def parameters(self, values: dict[str, Any]) -> None:
        self._parameters = values

    @property
    def raw_parameters(self) -> dict[str, Any]:
        """The parameters as kept: ``BigParameter`` outputs as references to the store."""
        return self._parameters

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepOutputValues):
            return NotImplemented
        return (self._parameters, self.artifacts) == (other._parameters, other.artifacts)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        return f"StepOutputValues(parameters={self._parameters!r}, artifacts={self.artifacts!r})"


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` naming the option closest to a misspelt ``word``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(word, options, n=1)
    if not close:  # "X" for "x", "SUCCEEDED": too unlike for difflib, the same but for case
        close = [o for o in options if o.lower() == word.lower()]
    return f"; did you mean {close[0]!r}?" if close else ""


class _NamedOutputs(dict[str, Any]):
    """A step's output parameters or artifacts as a run's records give them to users: a name
    the step has no output of raises a KeyError that names the step and the outputs it has
    (``in`` and ``.get`` are a dict's: they raise nothing)."""

    __slots__ = ("about",)
    kind = ""
    about: tuple[str, str]  # the step's path and phase

    def __missing__(self, key: Any) -> Any:
        path, phase = self.about
        have = sorted(self)
        hint = did_you_mean(key, have) if isinstance(key, str) else ""
        if have:
            listed = f"it has: {', '.join(have)}"
        else:
            listed = "it has none" + ("" if phase == "Succeeded" else f": its phase is {phase}")
        raise KeyError(f"step {path!r} has no output {self.kind} {key!r}{hint} ({listed})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_named, (type(self), dict(self), self.about))


class _NamedParameters(_NamedOutputs):
    __slots__ = ()
    kind = "parameter"


class _NamedArtifacts(_NamedOutputs):
    __slots__ = ()
    kind = "artifact"


def _named(
    cls: type[_NamedOutputs], values: dict[str, Any], about: tuple[str, str]
) -> _NamedOutputs:
    named = cls(values)
    named.about = about
    return named


def name_outputs(records: Iterable[StepRecord]) -> None:
    """Give the records' outputs their step's name, for the KeyError of a missing one. Done
    when users take records (``query_step``, ``.records``), not as steps end: the journal
    encodes plain dicts fastest, and a run needs no names."""
    for rec in records:
        values = rec.outputs
        raw = values._parameters
        if type(raw) is not _NamedParameters:
            raw = values._parameters = _NamedParameters(raw)
            raw.about = (rec.path, rec.phase)
        raw = values.artifacts
        if type(raw) is not _NamedArtifacts:
            raw = values.artifacts = _NamedArtifacts(raw)
            raw.about = (rec.path, rec.phase)


def _has_big(value: Any) -> bool:
    # a fan-out stacks its slices' values into a list (a fan-out of fan-outs, lists of lists)
    t = type(value)
    return t is BigValue or ((t is list or t is dict or t is tuple) and holds_big(value))


def _loaded(value: Any) -> Any:
    return with_values(value, _value_of)


def _value_of(big: BigValue) -> Any:
    return big.value


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
        """Change an output before reusing this record (``reuse_step=``), as in Dflow, which
        refuses a name the step has no output of: a misspelt one would be ignored by the run
        that reuses the record, and the old value used."""
        self._refuse_unknown(name, self.outputs.raw_parameters, "parameter")
        self.outputs.raw_parameters[name] = value
        return self

    def modify_output_artifact(self, name: str, artifact: Any) -> StepRecord:
        """Point an output artifact elsewhere before reusing this record."""
        self._refuse_unknown(name, self.outputs.artifacts, "artifact")
        self.outputs.artifacts[name] = artifact
        return self

    def _refuse_unknown(self, name: str, have: dict[str, Any], kind: str) -> None:
        if name not in have:
            listed = ", ".join(sorted(have)) or "none"
            raise KeyError(
                f"step {self.path!r} has no output {kind} {name!r} to modify"
                f"{did_you_mean(name, sorted(have))} (it has: {listed})"
            )

    def artifact_paths(self, name: str) -> list[Path]:
        from dflow_async._op import artifact_paths

        return artifact_paths(self.outputs.artifacts.get(name))

    def __repr__(self) -> str:
        key = f" key={self.key!r}" if self.key else ""
        return f"<StepRecord {self.path!r}{key} {self.phase}>"
