"""What to run: Step, Steps, DAG and their inputs/outputs. Pure data; no I/O happens here.

Everything is checked later, all at once, by :mod:`dflow_async._compile`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePath
from typing import Any, Literal

from dflow_async._op import MISSING
from dflow_async._records import did_you_mean
from dflow_async._refs import Ref, Scope

__all__ = [
    "DAG",
    "InputArtifact",
    "InputParameter",
    "Inputs",
    "OutputArtifact",
    "OutputParameter",
    "OutputRef",
    "Outputs",
    "RetryPolicy",
    "Slices",
    "Step",
    "Steps",
]


# ---------------------------------------------------------------- template inputs


class _InputRef(Ref):
    """A declared input of a Steps/DAG template; referencing it reads the running value."""

    __slots__ = ("_name", "_template", "description", "type", "value")
    kind: str = "parameters"

    def __init__(self, value: Any = MISSING, type: Any = None, description: str | None = None):
        self.value = value
        self.type = type
        self.description = description
        self._name: str | None = None
        self._template: Template | None = None

    @property
    def name(self) -> str:
        return self._name or "?"

    @property
    def template(self) -> Template | None:
        return self._template

    def evaluate(self, scope: Scope) -> Any:
        return scope.input_value(self.name, self.kind)

    def placeholder(self) -> str:
        return "{{inputs." + f"{self.kind}.{self.name}" + "}}"

    def __repr__(self) -> str:
        owner = self._template.name if self._template else "?"
        return f"<{owner}.inputs.{self.kind}[{self.name!r}]>"


class InputParameter(_InputRef):
    """A template input parameter; ``value=`` is its default."""

    __slots__ = ()


class InputArtifact(_InputRef):
    """A template input artifact; ``optional=True`` makes it default to None."""

    __slots__ = ("optional",)
    kind = "artifacts"

    def __init__(
        self, path: str | None = None, *, optional: bool = False, type: Any = None, **_: Any
    ) -> None:
        # ``path`` is where Argo mounts the artifact in a container; here artifacts are passed
        # by local path, so it has no effect.
        super().__init__(None if optional else MISSING, type)
        self.optional = optional


class _PortDict(dict[str, Any]):
    """A template's input ports; ports added later (``inputs.parameters["x"] = ...``) are
    bound to the template like those given to the constructor."""

    def __init__(
        self,
        owner: str,
        kind: str,
        items: dict[str, Any] | None = None,
        template: Template | None = None,
    ) -> None:
        super().__init__()
        self._owner = owner
        self._kind = kind
        self._template = template
        for name, value in (items or {}).items():
            self[name] = value

    def __setitem__(self, name: str, value: Any) -> None:
        if not isinstance(value, _InputRef):
            value = (
                InputArtifact() if self._kind == "input artifact" else InputParameter(value=value)
            )
        value._name = name
        value._template = self._template
        super().__setitem__(name, value)

    def __missing__(self, key: str) -> Any:
        raise KeyError(
            f"{self._owner} has no {self._kind} {key!r} (it has: {sorted(self) or 'none'})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle's default would set the items before the attributes __setitem__ reads
        return (type(self), (self._owner, self._kind, dict(self), self._template))


class Inputs:
    """Dflow's ``Inputs(parameters={...}, artifacts={...})``."""

    def __init__(
        self,
        parameters: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> None:
        self.parameters: dict[str, InputParameter] = {
            k: v if isinstance(v, InputParameter) else InputParameter(value=v)
            for k, v in (parameters or {}).items()
        }
        self.artifacts: dict[str, InputArtifact] = {
            k: v if isinstance(v, InputArtifact) else InputArtifact()
            for k, v in (artifacts or {}).items()
        }

    def _bind(self, template: Template) -> None:
        owner = f"template {template.name!r}"
        self.parameters = _PortDict(owner, "input parameter", self.parameters, template)
        self.artifacts = _PortDict(owner, "input artifact", self.artifacts, template)


# ---------------------------------------------------------------- template outputs


class OutputParameter:
    """A template output parameter taken from a step's output or an expression."""

    def __init__(
        self,
        value_from_parameter: Any = None,
        value_from_expression: Any = None,
        default: Any = MISSING,
        type: Any = None,
        value: Any = MISSING,
        description: str | None = None,
        **_: Any,
    ) -> None:
        self.source = (
            value_from_parameter if value_from_parameter is not None else value_from_expression
        )
        if self.source is None and value is not MISSING:
            self.source = value
        self.default = default
        self.type = type
        self.description = description


class OutputArtifact:
    """A template output artifact taken from a step's output artifact (``_from=``)."""

    def __init__(
        self,
        _from: Any = None,
        from_expression: Any = None,
        optional: bool = False,
        type: Any = None,
        **_: Any,
    ) -> None:
        self.source = _from if _from is not None else from_expression
        self.default = None if optional else MISSING
        self.type = type


def _output_parameter(value: Any) -> OutputParameter:
    """A template output parameter: a plain reference (or expression) is its source."""
    return (
        value if isinstance(value, OutputParameter) else OutputParameter(value_from_parameter=value)
    )


def _output_artifact(value: Any) -> OutputArtifact:
    """A template output artifact: a plain reference is its source."""
    return value if isinstance(value, OutputArtifact) else OutputArtifact(_from=value)


class _OutputPorts(dict[str, Any]):
    """A template's output ports. A plain reference assigned after construction
    (``steps.outputs.parameters["y"] = s.outputs.parameters["y"]``) is wrapped as
    ``Outputs(parameters={...})`` wraps one: the compiler reads OutputParameter/OutputArtifact
    only."""

    @staticmethod
    def _wrap(value: Any) -> Any:
        raise NotImplementedError

    def __init__(self, items: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.update(items or {})

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, self._wrap(value))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, name: str, default: Any = None) -> Any:
        if name not in self:
            self[name] = default
        return self[name]


class _OutputParameters(_OutputPorts):
    _wrap = staticmethod(_output_parameter)


class _OutputArtifacts(_OutputPorts):
    _wrap = staticmethod(_output_artifact)


class Outputs:
    """Dflow's ``Outputs(parameters={...}, artifacts={...})`` for Steps/DAG templates. Plain
    references given (here or assigned later) are the sources of output ports."""

    def __init__(
        self,
        parameters: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> None:
        self.parameters = parameters or {}
        self.artifacts = artifacts or {}

    @property
    def parameters(self) -> dict[str, OutputParameter]:
        return self._parameters

    @parameters.setter
    def parameters(self, table: dict[str, Any]) -> None:
        self._parameters = _OutputParameters(table)

    @property
    def artifacts(self) -> dict[str, OutputArtifact]:
        return self._artifacts

    @artifacts.setter
    def artifacts(self, table: dict[str, Any]) -> None:
        self._artifacts = _OutputArtifacts(table)


# ---------------------------------------------------------------- step outputs


class OutputRef(Ref):
    """``step.outputs.parameters["x"]`` or ``step.outputs.artifacts["y"]``."""

    __slots__ = ("kind", "name", "step")

    def __init__(self, step: Step, name: str, kind: str) -> None:
        self.step = step
        self.name = name
        self.kind = kind

    def evaluate(self, scope: Scope) -> Any:
        return scope.output_value(self.step.name, self.name, self.kind)

    def placeholder(self) -> str:
        return "{{steps." + f"{self.step.name}.outputs.{self.kind}.{self.name}" + "}}"

    def __repr__(self) -> str:
        return f"<{self.step.name}.outputs.{self.kind}[{self.name!r}]>"


class _OutputRefs:
    __slots__ = ("_cache", "_kind", "_step")

    def __init__(self, step: Step, kind: str) -> None:
        self._step = step
        self._kind = kind
        self._cache: dict[str, OutputRef] = {}

    def __getitem__(self, name: str) -> OutputRef:
        ref = self._cache.get(name)
        if ref is None:
            ref = self._cache[name] = OutputRef(self._step, name, self._kind)
        return ref


class StepOutputs:
    __slots__ = ("artifacts", "parameters")

    def __init__(self, step: Step) -> None:
        self.parameters = _OutputRefs(step, "parameters")
        self.artifacts = _OutputRefs(step, "artifacts")


# ---------------------------------------------------------------- policies


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and when a failed attempt is retried.

    ``retry_on`` names failure kinds: ``transient`` (the OP raised TransientError), ``infra``
    (the worker died or the transport broke; ``lost`` is accepted as another name for it),
    ``timeout``, and ``user`` (any other exception; off by default, as in Dflow). ``fatal``
    (FatalError) is never retried. The delay before retry n is exponential with jitter
    (tenacity's ``wait_exponential_jitter``).
    """

    max_retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 30.0
    jitter: float = 0.1
    retry_on: frozenset[str] = frozenset({"transient", "infra", "timeout"})

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("RetryPolicy.max_retries must be >= 0")
        kinds = {"infra" if k == "lost" else k for k in self.retry_on}
        unknown = kinds - {"transient", "infra", "timeout", "user"}
        if unknown:
            raise ValueError(
                f"RetryPolicy.retry_on has unknown kinds {sorted(unknown)}; "
                "use transient, infra, timeout, user"
            )
        object.__setattr__(self, "retry_on", frozenset(kinds))

    def should_retry(self, kind: str, attempt: int) -> bool:
        return attempt < self.max_retries and kind in self.retry_on

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        if self.backoff <= 0 and self.jitter <= 0:
            return 0.0
        from tenacity import RetryCallState, wait_exponential_jitter

        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt + 1
        wait = wait_exponential_jitter(
            multiplier=self.backoff, max=self.max_backoff, jitter=self.jitter
        )
        return float(wait(state))


NO_RETRY = RetryPolicy(max_retries=0)


@dataclass(frozen=True, slots=True)
class Slices:
    """Fan a step out over list inputs; stack its outputs into lists in slice order.

    ``slices`` is Dflow's index expression (``"{{item}}"``); with ``with_param`` it picks which
    element of the sliced inputs each item takes. ``group_size`` runs that many slices per
    attempt (amortising transport for tiny OPs); ``pool_size`` caps concurrent attempts.
    """

    slices: Any = None
    input_parameter: Sequence[str] = ()
    input_artifact: Sequence[str] = ()
    output_parameter: Sequence[str] = ()
    output_artifact: Sequence[str] = ()
    group_size: int | None = None
    pool_size: int | None = None
    sub_path: bool = False
    create_dir: bool = False
    # always empty now (unknown keywords are refused), but kept: repr(slices) is part of the
    # definition digest, which resume compares with the one a run recorded
    extra: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        slices: Any = None,
        input_parameter: Sequence[str] | None = None,
        input_artifact: Sequence[str] | None = None,
        output_parameter: Sequence[str] | None = None,
        output_artifact: Sequence[str] | None = None,
        group_size: int | None = None,
        pool_size: int | None = None,
        sub_path: bool = False,
        create_dir: bool = False,
        **unknown: Any,
    ) -> None:
        if unknown:  # a typo (pool_sise=) would otherwise run with no limit, silently
            name = next(iter(unknown))
            known = [f.name for f in fields(self) if f.name != "extra"]
            hint = did_you_mean(name, known) or f" (it takes: {known})"
            raise TypeError(f"Slices() got an unexpected keyword argument {name!r}{hint}")
        set_ = object.__setattr__
        set_(self, "slices", slices)
        set_(self, "input_parameter", tuple(input_parameter or ()))
        set_(self, "input_artifact", tuple(input_artifact or ()))
        set_(self, "output_parameter", tuple(output_parameter or ()))
        set_(self, "output_artifact", tuple(output_artifact or ()))
        set_(self, "group_size", group_size)
        set_(self, "pool_size", pool_size)
        set_(self, "sub_path", sub_path)
        set_(self, "create_dir", create_dir)
        set_(self, "extra", {})
        for label, value in (("group_size", group_size), ("pool_size", pool_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Slices({label}={value!r}): must be a positive integer")

    @property
    def sliced_inputs(self) -> tuple[str, ...]:
        return (*self.input_parameter, *self.input_artifact)


# ---------------------------------------------------------------- steps and templates

Condition = Ref | Callable[[dict[str, Any]], bool] | bool | str | None


class Step:
    """One use of a template (an OP or a Steps/DAG) with its inputs bound.

    ``when=`` runs the step only if it holds; otherwise it is skipped. It is a condition
    built from references (``a.outputs.parameters["n"] < 3``), a Dflow condition string
    (``"{{steps.a.outputs.parameters.n}} < 3"``), a bool, or a callable taking one argument,
    a dict of the step's inputs by port name (``when=lambda inputs: inputs["x"] > 0``; a
    fan-out's sliced inputs whole), called just before the step would start.
    """

    def __init__(
        self,
        name: str,
        template: Any,
        parameters: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        when: Condition = None,
        retries: int | RetryPolicy = 0,
        timeout: float | None = None,
        executor: Any = None,
        continue_on_failed: bool = False,
        continue_on_num_success: int | None = None,
        continue_on_success_ratio: float | None = None,
        slices: Slices | None = None,
        with_param: Any = None,
        dependencies: Iterable[Step | str] | None = None,
        resources: dict[str, Any] | None = None,
        cache: bool | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Step name must be a non-empty string, got {name!r}")
        if any(c in name for c in "/[]{}") or not name.isprintable():
            raise ValueError(
                f"Step name {name!r} may not contain '/', '[', ']', braces or control "
                "characters: they mark paths and placeholders (use letters, digits, '-', '_')"
            )
        self.name = name
        self.template = template
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.artifacts: dict[str, Any] = (
            {port: _absolute(value) for port, value in artifacts.items()} if artifacts else {}
        )
        self.key = key
        self.when = when
        if isinstance(retries, bool) or not isinstance(retries, int | RetryPolicy):
            raise TypeError(
                f"Step {name!r}: retries must be an int or a RetryPolicy, got {retries!r}"
            )
        self.retry = (
            retries
            if isinstance(retries, RetryPolicy)
            else (RetryPolicy(max_retries=retries) if retries else NO_RETRY)
        )
        if timeout is not None and timeout <= 0:
            raise ValueError(f"Step {name!r}: timeout must be positive seconds, got {timeout!r}")
        self.timeout = timeout
        self.executor = executor
        self.continue_on_failed = continue_on_failed
        if continue_on_num_success is not None and (
            isinstance(continue_on_num_success, bool)
            or not isinstance(continue_on_num_success, int)
            or continue_on_num_success < 0
        ):
            raise ValueError(
                f"Step {name!r}: continue_on_num_success must be an int >= 0 (the successful "
                f"slices that let the step succeed), got {continue_on_num_success!r}"
            )
        self.continue_on_num_success = continue_on_num_success
        if continue_on_success_ratio is not None and (
            isinstance(continue_on_success_ratio, bool)
            or not isinstance(continue_on_success_ratio, int | float)
            or not 0 <= continue_on_success_ratio <= 1
        ):
            raise ValueError(
                f"Step {name!r}: continue_on_success_ratio must be a number from 0 to 1 (the "
                f"share of slices that must succeed), got {continue_on_success_ratio!r}"
            )
        self.continue_on_success_ratio = continue_on_success_ratio
        self.slices = slices
        self.with_param = with_param
        self.dependencies = list(dependencies or [])
        self.resources = dict(resources or {})
        self.cache = cache
        self.outputs = StepOutputs(self)

    @property
    def tolerates_failure(self) -> bool:
        return (
            self.continue_on_failed
            or self.continue_on_num_success is not None
            or self.continue_on_success_ratio is not None
        )

    def __repr__(self) -> str:
        return f"<Step {self.name!r}>"


def _absolute(value: Any) -> Any:
    """A bound artifact value with its relative local paths made absolute against the current
    directory: the OP runs in its own work directory, where a relative path would name
    nothing. Resolved when the Step is created, as Dflow's ``upload_artifact`` does, so a
    workflow built in one directory may be run from another."""
    if isinstance(value, PurePath):
        return value if value.is_absolute() else Path(os.getcwd(), value)
    if isinstance(value, str):  # a placeholder or a URL is no local path
        local = "{{" not in value and "://" not in value and not os.path.isabs(value)
        return os.path.join(os.getcwd(), value) if local else value
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_absolute(v) for v in value)
    if isinstance(value, dict):
        return {k: _absolute(v) for k, v in value.items()}
    return value


class Template:
    """Shared by Steps and DAG: a named group of steps with declared inputs and outputs."""

    kind: Literal["steps", "dag"]

    def __init__(
        self,
        name: str,
        inputs: Inputs | dict[str, Any] | None = None,
        outputs: Outputs | dict[str, Any] | None = None,
        parallelism: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{type(self).__name__} name must be a non-empty string, got {name!r}")
        self.name = name
        if inputs is None:
            inputs = Inputs()
        elif isinstance(inputs, dict):
            inputs = Inputs(parameters=inputs)
        inputs._bind(self)
        self.inputs = inputs
        if outputs is None:
            outputs = Outputs()
        elif isinstance(outputs, dict):
            outputs = _outputs_from_refs(outputs)
        self.outputs = outputs
        if parallelism is not None and (not isinstance(parallelism, int) or parallelism < 1):
            raise ValueError(
                f"{type(self).__name__} {name!r}: parallelism must be an int >= 1 (or None for "
                f"no limit), got {parallelism!r}"
            )
        #: attempts of this template's own steps that may run at once, per run of it
        self.parallelism = parallelism
        self.groups: list[list[Step]] = []

    @property
    def steps(self) -> list[Step]:
        return [s for g in self.groups for s in g]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self.steps)} steps>"


def _outputs_from_refs(mapping: dict[str, Any]) -> Outputs:
    out = Outputs()
    for name, value in mapping.items():
        if isinstance(value, OutputArtifact) or (
            isinstance(value, OutputRef | _InputRef) and value.kind == "artifacts"
        ):
            out.artifacts[name] = _output_artifact(value)
        else:
            out.parameters[name] = _output_parameter(value)
    return out


class Steps(Template):
    """Sequential groups of parallel steps: ``add(step)`` appends a group of one,
    ``add([a, b])`` a group that runs in parallel. A group starts when the previous one ended."""

    kind = "steps"

    def add(self, step: Step | Sequence[Step]) -> Steps:
        group = [step] if isinstance(step, Step) else list(step)
        for s in group:
            if not isinstance(s, Step):
                raise TypeError(f"Steps.add takes Step objects or lists of them, got {s!r}")
        self.groups.append(group)
        return self


class DAG(Template):
    """Steps whose order follows data flow, plus explicit ``dependencies=[...]``."""

    kind = "dag"

    def add(self, step: Step | Sequence[Step]) -> DAG:
        group = [step] if isinstance(step, Step) else list(step)
        for s in group:
            if not isinstance(s, Step):
                raise TypeError(f"DAG.add takes Step objects or lists of them, got {s!r}")
        # a DAG's order comes from data flow: every step is its own group
        self.groups.extend([s] for s in group)
        return self
