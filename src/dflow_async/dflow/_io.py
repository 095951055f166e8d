"""Dflow's ``Inputs``/``Outputs`` and their parameters and artifacts, on the native classes.

The native classes already take Dflow's arguments and format as Dflow placeholders
(``"iter-%s" % steps.inputs.parameters["iter"]`` is ``"iter-{{inputs.parameters.iter}}"``).
What Dflow code also does, and these subclasses add:

* assign ports *after* building the template (``steps.inputs.parameters["x"] =
  InputParameter()``, ``steps.outputs.parameters["y"].value_from_parameter = ...``);
* Dflow's constructor arguments (``InputParameter(name=..., value=...)``,
  ``OutputArtifact(_from=...)``), refusing the container-only ones (``value_from_path``...);
* ``if_expression`` with a string condition (``"%s > 3" % ref``), evaluated safely.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dflow_async._graph import InputArtifact as _NativeInputArtifact
from dflow_async._graph import InputParameter as _NativeInputParameter
from dflow_async._graph import Inputs as _NativeInputs
from dflow_async._graph import OutputArtifact as _NativeOutputArtifact
from dflow_async._graph import OutputParameter as _NativeOutputParameter
from dflow_async._graph import Outputs as _NativeOutputs
from dflow_async._graph import Template, _InputRef
from dflow_async._op import MISSING
from dflow_async._refs import IfExpr, Ref, Scope, placeholder_steps, safe_condition
from dflow_async.dflow._unsupported import refuse

__all__ = [
    "InputArtifact",
    "InputParameter",
    "Inputs",
    "OutputArtifact",
    "OutputParameter",
    "Outputs",
    "StringCondition",
    "bind_template_ports",
    "if_expression",
    "string_condition_steps",
]


class InputParameter(_NativeInputParameter):
    """Dflow's ``InputParameter(name=None, ..., type=None, value=...)``."""

    def __init__(
        self,
        name: str | None = None,
        step: Any = None,
        template: Any = None,
        type: Any = None,
        save_as_artifact: bool = False,
        path: str | None = None,
        source: Any = None,
        **kwargs: Any,
    ) -> None:
        value = kwargs.pop("value", MISSING)
        if value is MISSING and source is not None:
            value = source
        super().__init__(value, type, kwargs.pop("description", None))
        if name is not None:
            self._name = name
        self.save_as_artifact = save_as_artifact  # BigParameter storage: no local meaning
        self.path = path
        self.optional = kwargs.pop("optional", False)
        if self.optional and value is MISSING:
            self.value = None


class InputArtifact(_NativeInputArtifact):
    """Dflow's ``InputArtifact(path=None, name=None, ..., optional=False, source=None)``."""

    def __init__(
        self,
        path: str | None = None,
        name: str | None = None,
        step: Any = None,
        template: Any = None,
        optional: bool = False,
        type: Any = None,
        source: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, optional=optional, type=type)
        if name is not None:
            self._name = name
        if source is not None:
            from dflow_async.dflow._artifacts import artifact_value

            self.value = artifact_value(source)  # a default artifact


def _expression(value: Any, what: str) -> Any:
    if isinstance(value, str) and "{{" not in value:
        refuse(
            f"{what} with an Argo expression string ({value!r})",
            "use if_expression(...) or references such as step.outputs.parameters['x']",
        )
    return value


class OutputParameter(_NativeOutputParameter):
    """Dflow's template output parameter; its sources may be set after construction."""

    def __init__(
        self,
        value_from_path: str | None = None,
        value_from_parameter: Any = None,
        name: str | None = None,
        step: Any = None,
        template: Any = None,
        type: Any = None,
        global_name: str | None = None,
        value_from_expression: Any = None,
        save_as_artifact: bool = False,
        save_both: bool = False,
        **kwargs: Any,
    ) -> None:
        if value_from_path is not None:
            refuse(
                "OutputParameter(value_from_path=...) (a file in a container)",
                "return the value from a PythonOPTemplate OP instead",
            )
        self._vfp = value_from_parameter
        self._vfe = _expression(value_from_expression, "OutputParameter(value_from_expression=)")
        self._value = kwargs.pop("value", MISSING)
        super().__init__(
            value_from_parameter=value_from_parameter,
            value_from_expression=self._vfe,
            default=kwargs.pop("default", MISSING),
            type=type,
            value=self._value,
        )
        self.global_name = global_name
        self._refresh()

    def _refresh(self) -> None:
        self.source = self._vfp if self._vfp is not None else self._vfe
        if self.source is None and self._value is not MISSING:
            self.source = self._value

    @property
    def value_from_parameter(self) -> Any:
        return self._vfp

    @value_from_parameter.setter
    def value_from_parameter(self, ref: Any) -> None:
        self._vfp = ref
        self._refresh()

    @property
    def value_from_expression(self) -> Any:
        return self._vfe

    @value_from_expression.setter
    def value_from_expression(self, expr: Any) -> None:
        self._vfe = _expression(expr, "OutputParameter.value_from_expression")
        self._refresh()


class OutputArtifact(_NativeOutputArtifact):
    """Dflow's template output artifact; ``_from``/``from_expression`` may be set later."""

    def __init__(
        self,
        path: str | None = None,
        _from: Any = None,
        name: str | None = None,
        step: Any = None,
        template: Any = None,
        type: Any = None,
        save: list[Any] | None = None,
        archive: str | None = "default",
        global_name: str | None = None,
        from_expression: Any = None,
        optional: bool = False,
    ) -> None:
        if path is not None:
            refuse("OutputArtifact(path=...) (a file in a container)", "use _from=...")
        if save:
            refuse("OutputArtifact(save=...)", "artifacts stay in the run store")
        self.__from = _from
        self._fexpr = _expression(from_expression, "OutputArtifact(from_expression=)")
        super().__init__(_from=_from, from_expression=self._fexpr, optional=optional, type=type)
        self.global_name = global_name

    def _refresh(self) -> None:
        self.source = self.__from if self.__from is not None else self._fexpr

    @property
    def _from(self) -> Any:
        return self.__from

    @_from.setter
    def _from(self, ref: Any) -> None:
        self.__from = ref
        self._refresh()

    @property
    def from_expression(self) -> Any:
        return self._fexpr

    @from_expression.setter
    def from_expression(self, expr: Any) -> None:
        self._fexpr = _expression(expr, "OutputArtifact.from_expression")
        self._refresh()


class Inputs(_NativeInputs):
    """Dflow's ``Inputs(parameters=..., artifacts=...)``; plain values become defaults."""

    def __init__(
        self,
        parameters: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
        step: Any = None,
        template: Any = None,
    ) -> None:
        super().__init__(
            {
                k: v if isinstance(v, _NativeInputParameter) else InputParameter(value=v)
                for k, v in (parameters or {}).items()
            },
            {
                k: v if isinstance(v, _NativeInputArtifact) else InputArtifact()
                for k, v in (artifacts or {}).items()
            },
        )


class Outputs(_NativeOutputs):
    """Dflow's ``Outputs(parameters=..., artifacts=...)`` for Steps and DAG templates."""

    def __init__(
        self,
        parameters: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
        step: Any = None,
        template: Any = None,
    ) -> None:
        super().__init__(
            {
                k: v
                if isinstance(v, _NativeOutputParameter)
                else OutputParameter(value_from_parameter=v)
                for k, v in (parameters or {}).items()
            },
            {
                k: v if isinstance(v, _NativeOutputArtifact) else OutputArtifact(_from=v)
                for k, v in (artifacts or {}).items()
            },
        )


class _TemplatePorts(dict[str, Any]):
    """A template's input ports that bind on assignment, as Dflow's ``AutonamedDict`` does:
    ``steps.inputs.parameters["x"] = InputParameter()`` names ``x`` and ties it to ``steps``."""

    def __init__(self, template: Template, kind: str, items: dict[str, Any]) -> None:
        super().__init__()
        self._template = template
        self._kind = kind
        for name, ref in items.items():
            self[name] = ref

    def __setitem__(self, name: str, ref: Any) -> None:
        if self._kind == "parameters" and not isinstance(ref, _NativeInputParameter):
            ref = InputParameter(value=ref)
        elif self._kind == "artifacts" and not isinstance(ref, _NativeInputArtifact):
            raise TypeError(f"inputs.artifacts[{name!r}] must be an InputArtifact, got {ref!r}")
        # the same private fields the core's Inputs._bind sets
        ref._name = name
        ref._template = self._template
        super().__setitem__(name, ref)

    def __missing__(self, key: str) -> Any:
        raise KeyError(
            f"template {self._template.name!r} has no input {self._kind[:-1]} {key!r} "
            f"(it has: {sorted(self) or 'none'})"
        )


def bind_template_ports(template: Template) -> None:
    """Make ``template.inputs`` bind ports assigned after construction."""
    inputs = template.inputs
    inputs.parameters = _TemplatePorts(template, "parameters", dict(inputs.parameters))
    inputs.artifacts = _TemplatePorts(template, "artifacts", dict(inputs.artifacts))


# ------------------------------------------------------------------------------- conditions


class StringCondition(Ref):
    """A Dflow condition string (``"{{steps.a.outputs.parameters.n}} < 3"``), evaluated by the
    core's AST-walking ``safe_condition``: placeholders become values, never source text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def evaluate(self, scope: Scope) -> Any:
        return safe_condition(self.text, scope)

    def refs(self) -> Iterator[Ref]:
        return iter(())  # its producers are named in the text (see string_condition_steps)

    def placeholder(self) -> str:
        return self.text


def if_expression(_if: Any, _then: Any, _else: Any) -> IfExpr:
    """Dflow's ``if_expression``; ``_if`` may be a reference, a bool or a condition string."""
    if isinstance(_if, str):
        if "{{=" in _if:
            refuse(f"an Argo expression condition ({_if!r})", "write it with %s placeholders")
        _if = StringCondition(_if)
    return IfExpr(_if, _then, _else)


def string_condition_steps(value: Any) -> list[str]:
    """Steps named inside string conditions nested in ``value`` (dependencies to declare)."""
    found: list[str] = []
    if isinstance(value, StringCondition):
        found += placeholder_steps(value.text)
    elif isinstance(value, IfExpr):
        for part in (value.cond, value.then, value.else_):
            found += string_condition_steps(part)
    elif isinstance(value, list | tuple):
        for v in value:
            found += string_condition_steps(v)
    elif isinstance(value, dict):
        for v in value.values():
            found += string_condition_steps(v)
    elif isinstance(value, Ref) and hasattr(value, "args"):
        for v in value.args:
            found += string_condition_steps(v)
    return found


_ = _InputRef  # the private fields set above belong to this class
