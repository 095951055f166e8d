"""Validate a workflow and compile it into flat per-template graphs the scheduler walks.

Every problem is collected and reported at once (``WorkflowValidationError``) before any step
runs. Compiled templates hold precomputed successor lists and predecessor counts, so the
scheduler does O(1) work per event and never rescans the graph.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from dflow_async._graph import (
    DAG,
    InputArtifact,
    OutputRef,
    RetryPolicy,
    Slices,
    Step,
    Template,
    _InputRef,
)
from dflow_async._op import MISSING, OP, Artifact, Parameter, as_op, op_name
from dflow_async._refs import (
    ItemRef,
    Ref,
    iter_refs,
    placeholder_steps,
    placeholders,
    referenced_steps,
    uses_item,
)
from dflow_async._types import describe, is_compatible, matches

__all__ = ["CompiledStep", "CompiledTemplate", "PortInfo", "compile_template"]


@dataclass(frozen=True, slots=True)
class PortInfo:
    kind: str  # "parameters" | "artifacts"
    type: Any
    default: Any  # MISSING when required


@dataclass(slots=True)
class Binding:
    port: str
    kind: str
    value: Any
    per_item: bool  # evaluated once per fan-out item


@dataclass(slots=True, eq=False)
class CompiledStep:
    index: int
    name: str
    step: Step | None  # None for a barrier between Steps groups
    op: OP | None = None
    sub: CompiledTemplate | None = None
    inputs: dict[str, PortInfo] = field(default_factory=dict)
    outputs: dict[str, PortInfo] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)
    executor: Any = None  # a name or an Executor instance
    retry: RetryPolicy | None = None
    fan_out: bool = False
    succs: list[int] = field(default_factory=list)
    npreds: int = 0

    @property
    def is_barrier(self) -> bool:
        return self.step is None


@dataclass(slots=True, eq=False)
class CompiledTemplate:
    template: Template
    name: str
    nodes: list[CompiledStep] = field(default_factory=list)
    by_name: dict[str, int] = field(default_factory=dict)
    roots: list[int] = field(default_factory=list)
    inputs: dict[str, PortInfo] = field(default_factory=dict)
    outputs: dict[str, tuple[PortInfo, Any]] = field(default_factory=dict)  # name -> (info, source)
    n_steps: int = 0


ExecutorCheck = Callable[[Any, OP], str | None]


class _Compiler:
    def __init__(self, default_executor: Any, check_executor: ExecutorCheck) -> None:
        self.default_executor = default_executor
        self.check_executor = check_executor
        self.problems: list[str] = []
        self.done: dict[int, CompiledTemplate] = {}
        self.owner: dict[int, Template] = {}  # id(step) -> the template it was added to

    def problem(self, text: str) -> None:
        self.problems.append(text)

    # ------------------------------------------------------------------ templates

    def template(self, tpl: Template) -> CompiledTemplate:
        known = self.done.get(id(tpl))
        if known is not None:
            return known
        ct = CompiledTemplate(template=tpl, name=tpl.name)
        self.done[id(tpl)] = ct  # before the steps: a template may use itself (recursion)
        for name, p in tpl.inputs.parameters.items():
            ct.inputs[name] = PortInfo("parameters", p.type or Any, p.value)
        for name, a in tpl.inputs.artifacts.items():
            ct.inputs[name] = PortInfo("artifacts", a.type or Any, None if a.optional else MISSING)
        for name, op_ in tpl.outputs.parameters.items():
            ct.outputs[name] = (PortInfo("parameters", op_.type or Any, op_.default), op_.source)
        for name, oa in tpl.outputs.artifacts.items():
            ct.outputs[name] = (PortInfo("artifacts", oa.type or Any, oa.default), oa.source)

        for step in tpl.steps:
            prev = self.owner.setdefault(id(step), tpl)
            if prev is not tpl:
                self.problem(
                    f"step {step.name!r} was added to both {prev.name!r} and {tpl.name!r}: "
                    "create one Step object per use"
                )
            if step.name in ct.by_name:
                self.problem(
                    f"template {tpl.name!r} has two steps named {step.name!r}: step names must "
                    "be unique within a template"
                )
                continue
            node = CompiledStep(index=len(ct.nodes), name=step.name, step=step)
            ct.by_name[step.name] = node.index
            ct.nodes.append(node)
        ct.n_steps = len(ct.nodes)
        for node in list(ct.nodes):
            self.step(ct, node)
        self.edges(ct)
        self.template_outputs(ct)
        return ct

    # ------------------------------------------------------------------ steps

    def step(self, ct: CompiledTemplate, node: CompiledStep) -> None:
        step = node.step
        assert step is not None
        where = f"step {ct.name}.{step.name}"
        tpl = step.template
        if isinstance(tpl, Template):
            node.sub = self.template(tpl)
            node.inputs = dict(node.sub.inputs)
            node.outputs = {n: info for n, (info, _) in node.sub.outputs.items()}
        else:
            try:
                node.op = as_op(tpl)
            except Exception as exc:
                self.problem(f"{where}: {exc}")
                return
            for name, port in node.op.input_ports().items():
                kind = "artifacts" if isinstance(port, Artifact) else "parameters"
                node.inputs[name] = PortInfo(kind, port.type, port.default)
            for name, port in node.op.output_ports().items():
                kind = "artifacts" if isinstance(port, Artifact) else "parameters"
                node.outputs[name] = PortInfo(kind, port.type, MISSING)
            node.executor = step.executor if step.executor is not None else self.default_executor
            message = self.check_executor(node.executor, node.op)
            if message:
                self.problem(f"{where} (OP {op_name(node.op)}): {message}")
        node.retry = step.retry
        node.fan_out = step.slices is not None or step.with_param is not None
        self.bindings(ct, node, where)
        self.slices(node, where)
        self.references(ct, node, where)
        if step.key is not None and not isinstance(step.key, str):
            self.problem(f"{where}: key must be a string (an f-string may embed references)")

    def bindings(self, ct: CompiledTemplate, node: CompiledStep, where: str) -> None:
        step = node.step
        assert step is not None
        sliced = set(step.slices.sliced_inputs) if step.slices else set()
        for kind, table in (("parameters", step.parameters), ("artifacts", step.artifacts)):
            for port, value in table.items():
                info = node.inputs.get(port)
                if info is None:
                    declared = sorted(n for n, i in node.inputs.items() if i.kind == kind)
                    self.problem(
                        f"{where}: binds {kind[:-1]} {port!r}, which its template does not "
                        f"declare (declared {kind}: {declared or 'none'})"
                    )
                    continue
                if info.kind != kind:
                    self.problem(
                        f"{where}: {port!r} is an {info.kind[:-1]} port; bind it in "
                        f"{info.kind}= instead of {kind}="
                    )
                    continue
                node.bindings.append(Binding(port, kind, value, uses_item(value)))
                if not _is_dynamic(value) and port not in sliced and kind == "parameters":
                    if not matches(info.type, value) and value is not None:
                        self.problem(
                            f"{where}: input {port!r} expects {describe(info.type)}, got "
                            f"{type(value).__name__} ({value!r:.60})"
                        )
                if isinstance(value, OutputRef):
                    self.producer_type(ct, node, port, info, value, where, port in sliced)
        bound = set(step.parameters) | set(step.artifacts)
        for port, info in node.inputs.items():
            if port not in bound and info.default is MISSING:
                self.problem(
                    f"{where}: required input {info.kind[:-1]} {port!r} is not bound; pass it in "
                    f"{info.kind}={{{port!r}: ...}}"
                )

    def producer_type(
        self,
        ct: CompiledTemplate,
        node: CompiledStep,
        port: str,
        info: PortInfo,
        ref: OutputRef,
        where: str,
        sliced: bool,
    ) -> None:
        idx = ct.by_name.get(ref.step.name)
        if idx is None or ct.nodes[idx].step is not ref.step:
            return  # reported by references()
        producer = ct.nodes[idx]
        out = producer.outputs.get(ref.name)
        if out is None:
            return  # reported by references() once the producer is compiled
        if out.kind != ref.kind:
            return
        produced = out.type
        if producer.fan_out:
            produced = list[produced]  # type: ignore[valid-type]
        consumed = list[info.type] if sliced else info.type  # type: ignore[valid-type]
        if not is_compatible(produced, consumed):
            self.problem(
                f"{where}: input {port!r} expects {describe(info.type)} but step "
                f"{ref.step.name!r} output {ref.name!r} is {describe(out.type)}"
            )

    def slices(self, node: CompiledStep, where: str) -> None:
        step = node.step
        assert step is not None
        sl: Slices | None = step.slices
        if sl is None:
            return
        bound = set(step.parameters) | set(step.artifacts)
        for port in sl.sliced_inputs:
            if port not in node.inputs:
                self.problem(f"{where}: Slices names input {port!r}, which the OP does not declare")
            elif port not in bound:
                self.problem(f"{where}: Slices names input {port!r}, which is not bound to a list")
        for port in (*sl.output_parameter, *sl.output_artifact):
            if port not in node.outputs:
                self.problem(f"{where}: Slices names output {port!r}, which the OP does not declare")
        if not sl.sliced_inputs and step.with_param is None:
            self.problem(f"{where}: Slices needs input_parameter/input_artifact or with_param")
        if node.sub is not None and sl.group_size:
            self.problem(f"{where}: group_size applies to OP steps, not to Steps/DAG templates")

    def references(self, ct: CompiledTemplate, node: CompiledStep, where: str) -> None:
        step = node.step
        assert step is not None
        values: list[Any] = [b.value for b in node.bindings]
        values += [step.when, step.with_param, step.key]
        for value in values:
            for ref in iter_refs(value):
                self.check_ref(ct, ref, where)
            for name in _string_step_names(value):
                if name not in ct.by_name:
                    self.problem(f"{where}: placeholder refers to unknown step {name!r}")
        for dep in step.dependencies:
            name = dep.name if isinstance(dep, Step) else dep
            if name not in ct.by_name:
                self.problem(f"{where}: depends on {name!r}, which is not a step of {ct.name!r}")
        if isinstance(step.with_param, ItemRef):
            self.problem(f"{where}: with_param cannot be the item itself")
        uses = any(isinstance(r, ItemRef) for v in values for r in iter_refs(v))
        uses = uses or any(
            p.split(".")[0] == "item" for v in values if isinstance(v, str) for p in placeholders(v)
        )
        if uses and not node.fan_out:
            self.problem(f"{where}: uses item but has neither with_param nor slices")

    def check_ref(self, ct: CompiledTemplate, ref: Ref, where: str) -> None:
        if isinstance(ref, _InputRef):
            if ref.template is not ct.template:
                owner = ref.template.name if ref.template else "no template"
                self.problem(
                    f"{where}: refers to input {ref.name!r} of {owner!r}, but the step belongs "
                    f"to {ct.name!r}; pass the value in as an input of {ct.name!r}"
                )
        elif isinstance(ref, OutputRef):
            idx = ct.by_name.get(ref.step.name)
            if idx is None or ct.nodes[idx].step is not ref.step:
                self.problem(
                    f"{where}: refers to step {ref.step.name!r}, which is not a step of "
                    f"{ct.name!r} (add it to the same Steps/DAG)"
                )
                return
            producer = ct.nodes[idx]
            if producer.op is None and producer.sub is None:
                return
            out = producer.outputs.get(ref.name)
            kinds = [n for n, i in producer.outputs.items() if i.kind == ref.kind]
            if out is None or out.kind != ref.kind:
                self.problem(
                    f"{where}: step {ref.step.name!r} has no output {ref.kind[:-1]} "
                    f"{ref.name!r} (it has: {sorted(kinds) or 'none'})"
                )

    # ------------------------------------------------------------------ edges

    def edges(self, ct: CompiledTemplate) -> None:
        tpl = ct.template
        graph = nx.DiGraph()
        graph.add_nodes_from(range(len(ct.nodes)))
        group_of: dict[str, int] = {}
        for g, group in enumerate(tpl.groups):
            for s in group:
                group_of.setdefault(s.name, g)
        for node in ct.nodes[: ct.n_steps]:
            step = node.step
            assert step is not None
            producers: set[str] = set()
            for value in [b.value for b in node.bindings] + [step.when, step.with_param, step.key]:
                for p in referenced_steps(value):
                    producers.add(p.name if isinstance(p, Step) else p)
            for d in step.dependencies:
                producers.add(d.name if isinstance(d, Step) else d)
            for name in producers:
                idx = ct.by_name.get(name)
                if idx is None:
                    continue
                if idx == node.index:
                    self.problem(f"step {ct.name}.{node.name}: depends on its own outputs")
                    continue
                if not isinstance(tpl, DAG) and group_of[name] >= group_of[node.name]:
                    self.problem(
                        f"step {ct.name}.{node.name}: uses step {name!r}, which runs in the same "
                        f"or a later group of Steps {ct.name!r}; add it after {name!r}"
                    )
                    continue
                graph.add_edge(idx, node.index)
        if not isinstance(tpl, DAG):
            self.barriers(ct, graph)
        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            names = [ct.nodes[a].name for a, _ in cycle] + [ct.nodes[cycle[0][0]].name]
            self.problem(f"DAG {ct.name!r} has a cycle: {' -> '.join(names)}")
            return
        # a transitive reduction would save edges, but costs O(n*m); plain edges are enough
        for a, b in graph.edges:
            ct.nodes[a].succs.append(b)
            ct.nodes[b].npreds += 1
        ct.roots = [n.index for n in ct.nodes if n.npreds == 0]

    def barriers(self, ct: CompiledTemplate, graph: nx.DiGraph) -> None:
        """Steps groups run in order: a barrier node between consecutive groups keeps the edge
        count linear (n + m instead of n * m for two wide groups)."""
        groups = ct.template.groups
        for g in range(1, len(groups)):
            barrier = CompiledStep(index=len(ct.nodes), name=f"<group {g}>", step=None)
            ct.nodes.append(barrier)
            graph.add_node(barrier.index)
            for s in groups[g - 1]:
                if s.name in ct.by_name:
                    graph.add_edge(ct.by_name[s.name], barrier.index)
            for s in groups[g]:
                if s.name in ct.by_name:
                    graph.add_edge(barrier.index, ct.by_name[s.name])

    def template_outputs(self, ct: CompiledTemplate) -> None:
        for name, (info, source) in ct.outputs.items():
            where = f"template {ct.name!r} output {name!r}"
            if source is None and info.default is MISSING:
                self.problem(f"{where}: has neither a source (value_from_parameter/_from) nor a default")
            for ref in iter_refs(source):
                self.check_ref(ct, ref, where)
            for step_name in _string_step_names(source):
                if step_name not in ct.by_name:
                    self.problem(f"{where}: placeholder refers to unknown step {step_name!r}")


def _string_step_names(value: Any) -> list[str]:
    if isinstance(value, str):
        return placeholder_steps(value)
    if isinstance(value, list | tuple):
        return [n for v in value for n in _string_step_names(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _string_step_names(v)]
    return []


def _is_dynamic(value: Any) -> bool:
    if isinstance(value, Ref):
        return True
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, list | tuple):
        return any(_is_dynamic(v) for v in value)
    if isinstance(value, dict):
        return any(_is_dynamic(v) for v in value.values())
    return False


def compile_template(
    entry: Template, *, default_executor: Any, check_executor: ExecutorCheck
) -> tuple[CompiledTemplate, list[str]]:
    """Compile ``entry`` and every template it uses; returns the problems found (all of them)."""
    compiler = _Compiler(default_executor, check_executor)
    compiled = compiler.template(entry)
    for name, info in compiled.inputs.items():
        if info.default is MISSING:
            compiler.problem(
                f"workflow entry {entry.name!r}: input {name!r} has no value; give it a default "
                f"(inputs={{{name!r}: ...}}) or pass it to run(parameters=...)"
            )
    return compiled, compiler.problems


# keep names used only in annotations importable for type checkers
_ = (typing, Parameter, InputArtifact)
