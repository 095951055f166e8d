"""Dflow's ``Step`` and ``Task``, built as native steps.

A Dflow step gets its slices, retries and timeout from its ``PythonOPTemplate``; natively they
belong to the ``Step``. This module moves them over, translates Dflow values (uploaded
artifacts, ``argo_range(...)``, ``with_sequence``, string conditions) and refuses what would run
differently (Argo hooks, Kubernetes resources, Dflow executors).
"""

from __future__ import annotations

import json
import re
from typing import Any

from dflow_async._graph import Slices as _NativeSlices
from dflow_async._graph import Step as _NativeStep
from dflow_async._graph import Template
from dflow_async._op import OP as _NativeOP
from dflow_async._refs import Expr, _as_text
from dflow_async._types import matches
from dflow_async.dflow._adapt import KEY_PORT, ORIGIN_PREFIX, ForeignOP
from dflow_async.dflow._argo import ArgoSequence
from dflow_async.dflow._artifacts import artifact_value
from dflow_async.dflow._io import string_condition_steps
from dflow_async.dflow._unsupported import refuse
from dflow_async.dflow.python._template import PythonOPTemplate, Slices, StepSettings

__all__ = ["Step", "Task"]


def _settings(
    template: Any, keyed: bool, slices: Any, origins: tuple[str, ...] = ()
) -> StepSettings:
    if isinstance(template, PythonOPTemplate):
        return template.step_settings(keyed, slices, origins)
    if isinstance(template, Template | _NativeOP) or callable(getattr(template, "execute", None)):
        # Steps/DAG, a native OP, or a Dflow OP class used without a PythonOPTemplate
        return StepSettings(template=template, slices=slices)
    name = type(template).__name__
    refuse(f"{name} templates", "use PythonOPTemplate, Steps or DAG")


def _port_types(template: Any) -> dict[str, Any]:
    if isinstance(template, Template):
        return {n: p.type for n, p in template.inputs.parameters.items()}
    if isinstance(template, _NativeOP):
        return {n: getattr(p, "type", None) for n, p in template.input_ports().items()}
    return {}


_WHOLE_PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")


def _parameter(value: Any, tp: Any) -> Any:
    """Dflow parameters travel as text on Argo; a static string for a typed port is decoded
    as JSON (``"3"`` for an ``int`` port), as Dflow's OP loader does."""
    if isinstance(value, str):
        if "{{=" in value:
            refuse(f"an Argo expression in a parameter ({value!r})", "use references or argo_*()")
        if tp is str and _WHOLE_PLACEHOLDER.fullmatch(value.strip()):
            # a string that is one placeholder renders as the raw value (the int item of
            # argo_range): a str port takes it as text, as Argo substitutes it ("{{item}}" -> "2")
            return Expr(_as_text, "str", value)
        if "{{" not in value and tp not in (None, Any, str) and not matches(tp, value):
            try:
                decoded = json.loads(value)
            except ValueError:
                return value
            if matches(tp, decoded):
                return decoded
    return value


def _with_param(value: Any, sequence: Any) -> Any:
    if sequence is not None:
        if value is not None:
            raise ValueError("pass with_param= or with_sequence=, not both")
        if not isinstance(sequence, ArgoSequence):
            raise TypeError(f"with_sequence takes argo_sequence(...), got {sequence!r}")
        return sequence.items()
    if isinstance(value, str) and "{{=" in value:
        refuse(f"with_param with an Argo expression ({value!r})", "use argo_range/argo_len")
    if isinstance(value, tuple | range):
        return list(value)
    return value


_DEPENDENCY = re.compile(r"^\s*([a-z0-9][-a-z0-9]*)(\.Succeeded)?\s*$")


def _dependencies(deps: Any) -> list[Any]:
    found: list[Any] = []
    for dep in deps or []:
        if isinstance(dep, str):
            match = _DEPENDENCY.match(dep)
            if match is None:
                refuse(f"an Argo dependency expression ({dep!r})", "list task names or Tasks")
            found.append(match.group(1))
        else:
            found.append(dep)
    return found


class Step(_NativeStep):
    """Dflow's ``Step(name, template, parameters=..., artifacts=..., when=..., with_param=...,
    key=..., continue_on_*=..., slices=..., parallelism=...)``."""

    def __init__(
        self,
        name: str,
        template: Any,
        parameters: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
        when: Any = None,
        with_param: Any = None,
        continue_on_failed: bool = False,
        continue_on_error: bool = False,
        continue_on_num_success: int | None = None,
        continue_on_success_ratio: float | None = None,
        with_sequence: Any = None,
        key: str | None = None,
        executor: Any = None,
        use_resource: Any = None,
        util_image: str | None = None,
        util_image_pull_policy: str | None = None,
        util_command: Any = None,
        parallelism: int | None = None,
        slices: Slices | None = None,
        success_hook: Any = None,
        running_hook: Any = None,
        failure_hook: Any = None,
        *,
        dependencies: list[Any] | None = None,
    ) -> None:
        for feature, value in (
            ("success_hook", success_hook),
            ("running_hook", running_hook),
            ("failure_hook", failure_hook),
        ):
            if value is not None:
                refuse(f"Step({feature}=...) (Argo lifecycle hooks)", "add a step after it")
        if use_resource is not None:
            refuse("Step(use_resource=...) (Kubernetes resources)", "run the work in an OP")
        if continue_on_error and not continue_on_failed:
            refuse(
                "Step(continue_on_error=True) alone (continue on Argo errors only)",
                "use continue_on_failed=True, which tolerates errors and failures",
            )
        if executor is not None and not _is_native_executor(executor):
            refuse(
                f"Dflow executors ({type(executor).__name__})",
                "choose a dflow-async executor: Workflow(executor=...) or config['executor']",
            )
        if isinstance(when, str) and "{{=" in when:
            refuse(f"an Argo expression condition ({when!r})", "write it with %s placeholders")
        self.dflow_template = template
        with_param = _with_param(with_param, with_sequence)
        arts = {k: artifact_value(v) for k, v in (artifacts or {}).items()}
        bound = tuple(sorted(k for k, v in arts.items() if v is not None))
        settings = _settings(template, key is not None, slices, bound)
        types = _port_types(settings.template)
        params = {k: _parameter(v, types.get(k)) for k, v in (parameters or {}).items()}
        op = settings.template
        ports = op.input_ports() if isinstance(op, ForeignOP) else {}
        if key is not None and KEY_PORT in ports:
            params[KEY_PORT] = key  # rendered per step (per slice with {{item}})
        origins = [k for k in bound if ORIGIN_PREFIX + k in ports]
        for k in origins:  # the artifact again, as a parameter: the store never rewrites it
            params[ORIGIN_PREFIX + k] = arts[k]
        native_slices: _NativeSlices | None = None
        sl = settings.slices
        if isinstance(sl, Slices):
            sliced = tuple(ORIGIN_PREFIX + k for k in origins if k in sl.input_artifact)
            native_slices = sl.to_native(with_param, parallelism, sliced)
        elif isinstance(sl, _NativeSlices):
            native_slices = sl
        elif parallelism is not None and with_param is not None:
            native_slices = _NativeSlices(pool_size=parallelism)
        deps = _dependencies(dependencies)
        deps += string_condition_steps(params)  # producers named only inside condition strings
        super().__init__(
            name,
            settings.template,
            params,
            arts,
            key=key,
            when=when,
            retries=settings.retries,
            timeout=settings.timeout,
            executor=executor,
            continue_on_failed=continue_on_failed,
            continue_on_num_success=continue_on_num_success,
            continue_on_success_ratio=continue_on_success_ratio,
            slices=native_slices,
            with_param=with_param,
            dependencies=deps,
            resources=settings.resources,
        )
        self.util_image = util_image
        self.util_command = util_command


class Task(Step):
    """Dflow's ``Task(name, template, dependencies=None, ...)`` for DAGs."""

    def __init__(
        self, name: str, template: Any, dependencies: list[Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name, template, dependencies=dependencies, **kwargs)


def _is_native_executor(executor: Any) -> bool:
    from dflow_async.executors._base import Executor

    return isinstance(executor, str | Executor)
