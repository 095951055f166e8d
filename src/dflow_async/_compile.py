"""Validate a workflow and compile it into flat per-template graphs the scheduler walks.

Every problem is collected and reported at once (``WorkflowValidationError``) before any step
runs. Compiled templates hold precomputed successor lists and predecessor counts, so the
scheduler does O(1) work per event and never rescans the graph.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import networkx as nx

from dflow_async._graph import (
    DAG,
    OutputRef,
    RetryPolicy,
    Slices,
    Step,
    Template,
    _InputRef,
)
from dflow_async._op import MISSING, OP, Artifact, FunctionOP, artifact_leaves, as_op, op_name
from dflow_async._refs import (
    ItemRef,
    Ref,
    Scan,
    check_condition,
    iter_refs,
    path_steps,
    scan,
    string_steps,
    uses_item,
)
from dflow_async._types import describe, is_compatible, item_type, matches

__all__ = [
    "CompiledStep",
    "CompiledTemplate",
    "PortInfo",
    "as_networkx",
    "compile_template",
    "definition_digest",
]


class PortInfo(typing.NamedTuple):  # a tuple: built once per port per step, cheaply
    kind: str  # "parameters" | "artifacts"
    type: Any
    default: Any  # MISSING when required


@dataclass(slots=True)
class Binding:
    """An input bound to references or placeholders (literals are constant inputs)."""

    port: str
    kind: str
    value: Any
    per_item: bool  # evaluated once per fan-out item
    # value is one step's output, of a step of the same template: (its node, kind, name),
    # for the scheduler to read it straight from the run's results
    source: tuple[int, str, str] | None = None


_NO_PORTS: dict[str, PortInfo] = {}  # a barrier's, or a step's whose OP failed to load
_NO_NAMES: frozenset[str] = frozenset()


@dataclass(slots=True, eq=False, init=False)
class CompiledStep:
    index: int
    name: str
    step: Step | None  # None for a barrier between Steps groups
    op: OP | None
    sub: CompiledTemplate | None
    inputs: dict[str, PortInfo]  # may be shared with other steps of the same OP: read-only
    outputs: dict[str, PortInfo]  # likewise
    # precomputed for the scheduler: literal inputs and defaults (copied once per run of the
    # step), bindings evaluated once per run, bindings evaluated once per fan-out item.
    # Tuples, and the shared () when empty, like producers: a container per step that
    # outlives validation is one more object for every garbage collection to walk.
    const_inputs: dict[str, Any]
    run_bindings: tuple[Binding, ...]
    item_bindings: tuple[Binding, ...]
    executor: Any  # a name or an Executor instance
    retry: RetryPolicy | None
    fan_out: bool
    producers: AbstractSet[str]  # names of steps it depends on
    key_per_item: bool  # the key uses the fan-out item: one record per slice
    cache: bool
    has_artifact_outputs: bool
    inline_async: bool  # set by the scheduler: awaited in the loop, no executor call
    thread_lane: Any  # set by the scheduler: the executor whose threads advance the run
    template_name: str
    group_size: int  # slices per attempt
    pool_size: int | None  # concurrent attempts of this step
    succs: list[int]
    npreds: int

    def __init__(self, index: int, name: str, step: Step | None) -> None:
        # written out rather than generated: one is built per step of a workflow, and the
        # generated __init__ (keyword parsing, default factories) costs twice as much
        self.index = index
        self.name = name
        self.step = step
        self.op = None
        self.sub = None
        self.inputs = _NO_PORTS  # step() sets the template's
        self.outputs = _NO_PORTS
        self.const_inputs = {}
        self.run_bindings = ()
        self.item_bindings = ()
        self.executor = None
        self.retry = None
        self.fan_out = False
        self.producers = _NO_NAMES
        self.key_per_item = False
        self.cache = False
        self.has_artifact_outputs = False
        self.inline_async = False
        self.thread_lane = None
        self.template_name = ""
        self.group_size = 1
        self.pool_size = None
        self.succs = []
        self.npreds = 0


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
# what references() is left to check of a bound value: its scan, or only the name of the step
# whose output it is when bindings() found that step and checked the reference already
_Pending = Scan | str


class _OpProfile(typing.NamedTuple):
    inputs: dict[str, PortInfo]
    outputs: dict[str, PortInfo]
    has_artifact_outputs: bool
    template_name: str
    cache: bool
    accepted_by: set[str]  # executor names whose check_op passed


class _Compiler:
    def __init__(self, default_executor: Any, check_executor: ExecutorCheck) -> None:
        self.default_executor = default_executor
        self.check_executor = check_executor
        self.problems: list[str] = []
        self.done: dict[int, CompiledTemplate] = {}
        self.owner: dict[int, Template] = {}  # id(step) -> the template it was added to
        self._first_recorded = False  # whether owner has the first template's steps (owners())
        # key -> the first node using it and its "step <template>.<name>" (two templates may
        # share a name: the node tells the steps apart)
        self.literal_keys: dict[str, tuple[CompiledStep, str]] = {}
        # (template, key, "step <template>.<name>") of every literal key, for repeated_keys()
        self.literal_keyed: list[tuple[CompiledTemplate, str, str]] = []
        self._profiles: dict[Any, _OpProfile] = {}
        # id -> profile of the OP instances used as step templates (an @op function's is one):
        # the OP of their steps is the template itself, nothing to load
        self._shared_ops: dict[int, _OpProfile] = {}
        # checks of references whose producer was added after the step reading it: they need
        # the producer compiled (its output signs, whether it fans out), so they wait until
        # every step of the template is (see template()). Partials, not lambdas: a lambda
        # would turn the checking functions' locals into cells, a cost on every call.
        self._later: list[Callable[[], object]] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def op_profile(self, key: Any, op: OP) -> _OpProfile:
        """What every step using the same OP template shares (read-only), worked out once."""
        found = self._profiles.get(key)
        if found is None:

            def info(port: Any) -> PortInfo:
                kind = "artifacts" if isinstance(port, Artifact) else "parameters"
                return PortInfo(kind, port.type, port.default)

            ins = {n: info(p) for n, p in op.input_ports().items()}
            outs = {n: info(p) for n, p in op.output_ports().items()}
            found = self._profiles[key] = _OpProfile(
                inputs=ins,
                outputs=outs,
                has_artifact_outputs=any(i.kind == "artifacts" for i in outs.values()),
                template_name=str(getattr(op, "__qualname__", type(op).__qualname__)),
                cache=bool(getattr(op, "cache", False)),
                accepted_by=set(),
            )
        return found

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

        self.add_nodes(ct)
        # steps compile in the order they were added, but a DAG step may read one added after
        # it: those checks are kept (per template: a step's template compiles in the middle of
        # this loop) and run once every step of this template is compiled
        outer, self._later = self._later, []
        compile_step = self.step
        for node in list(ct.nodes):
            compile_step(ct, node)
        later, self._later = self._later, outer
        for check in later:
            check()
        self.edges(ct)
        self.template_outputs(ct)
        return ct

    def add_nodes(self, ct: CompiledTemplate) -> None:
        """A node per step, in order (a Step object in two templates and two steps of one
        name are reported). Names and attributes are looked up once: this runs per step."""
        tpl, nodes, by_name = ct.template, ct.nodes, ct.by_name
        owner = self.owners()
        for step in tpl.steps:
            name = step.name
            prev = tpl if owner is None else owner.setdefault(id(step), tpl)
            if prev is not tpl:
                self.problem(
                    f"step {name!r} was added to both {prev.name!r} and {tpl.name!r}: "
                    "create one Step object per use"
                )
            if name in by_name:
                self.problem(
                    f"template {tpl.name!r} has two steps named {name!r}: step names must "
                    "be unique within a template"
                )
                continue
            by_name[name] = len(nodes)
            nodes.append(CompiledStep(len(nodes), name, step))
        ct.n_steps = len(nodes)

    def owners(self) -> dict[int, Template] | None:
        """``self.owner`` for add_nodes() to record the steps of the template it adds (the
        last one in ``self.done``) and find those added to an earlier one; None for the first
        template. A Step object added to two templates is found when the second is added:
        the first template's steps are recorded then, and a workflow of one template (the
        most common) records none."""
        if len(self.done) == 1:
            return None
        if not self._first_recorded:
            self._first_recorded = True
            first = next(iter(self.done.values())).template
            for step in first.steps:
                self.owner.setdefault(id(step), first)
        return self.owner

    # ------------------------------------------------------------------ steps

    def step(self, ct: CompiledTemplate, node: CompiledStep) -> None:
        step = node.step
        assert step is not None
        where = f"step {ct.name}.{step.name}"
        tpl = step.template
        profile = self._shared_ops.get(id(tpl))  # most steps: an OP instance met before
        if profile is None and isinstance(tpl, Template):
            self.template_step_options(step, tpl, where)
            node.sub = self.template(tpl)
            node.inputs = dict(node.sub.inputs)
            node.outputs = {n: info for n, (info, _) in node.sub.outputs.items()}
            node.has_artifact_outputs = any(i.kind == "artifacts" for i in node.outputs.values())
            node.template_name = node.sub.name
            node.cache = bool(step.cache)
        else:
            if profile is not None:
                op: OP = tpl
            else:
                loaded = self.load_op(tpl, where)
                if loaded is None:  # reported
                    return
                op, profile = loaded
            node.op = op
            node.inputs = profile.inputs
            node.outputs = profile.outputs
            node.has_artifact_outputs = profile.has_artifact_outputs
            node.template_name = profile.template_name
            node.cache = profile.cache if step.cache is None else bool(step.cache)
            executor = step.executor if step.executor is not None else self.default_executor
            node.executor = executor
            # an executor that accepted this template once accepts every step of it (the
            # instances of a class template are alike); refusals are reported per step
            accepted = profile.accepted_by
            if not (type(executor) is str and executor in accepted):
                message = self.check_executor(executor, op)
                if message:
                    self.problem(f"{where} (OP {op_name(op)}): {message}")
                elif type(executor) is str:
                    accepted.add(executor)
        node.retry = step.retry
        node.fan_out = step.slices is not None or step.with_param is not None
        if step.slices is not None:
            node.group_size = step.slices.group_size or 1
            node.pool_size = step.slices.pool_size
        key: Any = step.key
        node.key_per_item = node.fan_out and uses_item(key)
        pending, names_only = self.bindings(ct, node, where)
        if step.slices is not None:
            self.slices(node, where)
        if step.with_param is not None:
            self.with_param(ct, node, where, node.index)
        # references() checks what bindings() left and the step's own references and
        # dependencies. A step reading other steps' outputs and nothing else (a chain's) only
        # has its producers to note; most independent steps bind nothing but literals.
        if (
            not names_only
            or step.dependencies
            or step.when is not None
            or step.with_param is not None
            or key is not None
        ):
            self.references(ct, node, where, pending)
        elif pending:
            node.producers = set(pending)  # type: ignore[arg-type]  # names: names_only
        if key is not None and not isinstance(key, str):
            self.problem(f"{where}: key must be a string (an f-string may embed references)")
        elif key is not None and "{{" not in key:  # a literal: the same for every execution
            first_node, first = self.literal_keys.setdefault(key, (node, where))
            self.literal_keyed.append((ct, key, where))
            if first_node is not node:
                self.problem(
                    f"{where}: key {key!r} is also the key of {first[5:]}; keys name one "
                    "execution each (for queries, resume and reuse): make them unique, e.g. "
                    "by embedding an input in an f-string"
                )

    def repeated_keys(self, root: CompiledTemplate) -> None:
        """A literal key inside a template that runs more than once (used by several steps,
        sliced, recursive, or inside one that is) names every run's record alike: queries and
        ``reuse_step=`` would take one run for another. Checked once every template is
        compiled, and only for workflows with literal keys."""
        graph = nx.DiGraph()  # template -> the templates its steps use, by id
        names: dict[int, str] = {}
        users: dict[int, list[str]] = {}  # the steps using each template
        sliced: dict[int, str] = {}  # a step fanning out over it
        for ct in walk_templates(root):
            names[id(ct)] = ct.name
            graph.add_node(id(ct))
            for node in ct.nodes:
                if node.sub is not None:
                    graph.add_edge(id(ct), id(node.sub))
                    users.setdefault(id(node.sub), []).append(f"{ct.name}.{node.name}")
                    if node.fan_out:
                        sliced.setdefault(id(node.sub), f"{ct.name}.{node.name}")
        why: dict[int, str] = {}
        for loop in nx.strongly_connected_components(graph):
            for t in loop:
                if len(loop) > 1 or graph.has_edge(t, t):
                    why[t] = "calls itself"
        for t, steps in users.items():
            if t in why:
                continue
            if t in sliced:
                why[t] = f"is sliced by step {sliced[t]}"
            elif len(steps) > 1:
                why[t] = f"used by steps {', '.join(steps[:-1])} and {steps[-1]}"
        todo = list(why)  # the templates a repeated one uses repeat with it
        while todo:
            t = todo.pop()
            for inner in graph.successors(t):
                if inner not in why:
                    why[inner] = f"runs inside {names[t]!r}, which runs more than once"
                    todo.append(inner)
        for ct, key, where in self.literal_keyed:
            reason = why.get(id(ct))
            if reason is None:
                continue
            port = next((n for n, i in ct.inputs.items() if i.kind == "parameters"), None)
            example = (
                f'key=f"{key}-{{{ct.name}.inputs.parameters[{port!r}]}}"'
                if port is not None
                else f"give {ct.name!r} an input that tells its runs apart and embed it"
            )
            self.problem(
                f"{where}: key {key!r} is the same for every run of template {ct.name!r}, "
                f"which runs more than once ({reason}): embed an input in the key, e.g. "
                f"{example}"
            )

    def load_op(self, tpl: Any, where: str) -> tuple[OP, _OpProfile] | None:
        """The OP and profile of a step whose template is no OP instance met before (step()
        finds those in ``_shared_ops``); None if it fails to load (reported)."""
        try:
            # as_op() returns an OP instance (an @op function's is one) as it is
            op = tpl if isinstance(tpl, OP) else as_op(tpl)
        except Exception as exc:
            self.problem(f"{where}: {exc}")
            return None
        # a class template is instantiated per step: its signs are the class's
        which = tpl if isinstance(tpl, type) else id(tpl)
        profile = self._profiles.get(which) or self.op_profile(which, op)
        if op is tpl:  # an OP instance: the OP of every step using it
            self._shared_ops[id(tpl)] = profile
        return op, profile

    def template_step_options(self, step: Step, tpl: Template, where: str) -> None:
        """Options that act on one OP attempt mean nothing on a Steps/DAG step: refused,
        never silently ignored."""
        for option, given in (
            ("timeout", step.timeout is not None),
            ("retries", step.retry.max_retries > 0),
            ("executor", step.executor is not None),
        ):
            if given:
                self.problem(
                    f"{where}: {option}= applies to OP steps; its template {tpl.name!r} is a "
                    f"{type(tpl).__name__}: set {option}= on the steps inside it"
                )

    def bindings(
        self, ct: CompiledTemplate, node: CompiledStep, where: str
    ) -> tuple[list[_Pending], bool]:
        """Sort the step's inputs into constants and bindings, checking them. Returns what is
        left to check of the bindings' values, those of ``run_bindings`` then those of
        ``item_bindings``, for references() to check without walking the values again, and
        whether that is only producers' names (every reference checked already)."""
        step = node.step
        assert step is not None
        sliced = step.slices.sliced_inputs if step.slices else ()
        inputs = node.inputs
        const = node.const_inputs
        run: list[Binding] = []
        per_item: list[Binding] = []
        run_scans: list[_Pending] = []
        item_scans: list[_Pending] = []
        parameters, artifacts = step.parameters, step.artifacts
        bound = 0  # declared ports bound (each once: a port has one kind)
        names_only = True  # whether run_scans holds producers' names only (a scan clears it)
        me = node.index
        tables: tuple[tuple[str, dict[str, Any]], ...] = (("parameters", parameters),)
        if artifacts:  # most steps bind none: not even an empty loop for them
            tables += (("artifacts", artifacts),)
        for kind, table in tables:
            for port, value in table.items():
                info = inputs.get(port)
                if info is None or info.kind != kind:
                    self.misbound(inputs, kind, port, where)
                    continue
                bound += 1
                # the common cases first (another step's output; a plain literal of exactly
                # the declared type): every step of a workflow goes through here
                if type(value) is OutputRef:
                    binding = Binding(port, kind, value, False)
                    run.append(binding)
                    pending = self.output_binding(ct, binding, info, port in sliced, where, me)
                    run_scans.append(pending)
                    names_only = names_only and isinstance(pending, str)
                    continue
                if type(value) in _LITERALS or not _is_dynamic(value):
                    const[port] = value
                    if value is None:
                        continue
                    if kind == "artifacts":
                        self.local_paths(port, value, where)
                    elif (
                        type(value) is not info.type
                        and port not in sliced
                        and not matches(info.type, value)
                    ):
                        self.problem(
                            f"{where}: input {port!r} expects {describe(info.type)}, got "
                            f"{type(value).__name__} ({value!r:.60})"
                        )
                    continue
                found = scan(value)
                names_only = False
                binding = Binding(port, kind, value, found[2])
                if binding.per_item:
                    per_item.append(binding)
                    item_scans.append(found)
                else:
                    run.append(binding)
                    run_scans.append(found)
                if isinstance(value, OutputRef):  # of a subclass: its own scan() is checked
                    self.output_binding(ct, binding, info, port in sliced, where, me)
        if bound < len(inputs):  # not every declared input is bound
            self.unbound(node, where)
        if run:
            node.run_bindings = tuple(run)
        if per_item:
            node.item_bindings = tuple(per_item)
        run_scans += item_scans
        return run_scans, names_only

    def local_paths(self, port: str, value: Any, where: str) -> None:
        """Local files bound as an artifact input must exist: else the OP would fail on the
        first read, after the steps before it ran. Paths from the store (``upload_artifact``)
        carry a reference and are checked when the run takes them in (adopt_inputs)."""
        for leaf in artifact_leaves(value):
            if (
                isinstance(leaf, str | os.PathLike)
                and getattr(leaf, "ref", None) is None
                and not os.path.lexists(leaf)
            ):
                self.problem(
                    f"{where}: artifact input {port!r}: local path {str(leaf)!r} does not "
                    "exist; create it before the run, or bind an existing file or directory"
                )

    def unbound(self, node: CompiledStep, where: str) -> None:
        """Declared inputs the step does not bind take their defaults; required ones are
        reported."""
        step = node.step
        assert step is not None
        for port, info in node.inputs.items():
            if port in step.parameters or port in step.artifacts:
                continue
            if info.default is MISSING:
                self.problem(
                    f"{where}: required input {info.kind[:-1]} {port!r} is not bound; pass it in "
                    f"{info.kind}={{{port!r}: ...}}"
                )
            else:
                node.const_inputs[port] = info.default

    def misbound(self, inputs: dict[str, PortInfo], kind: str, port: str, where: str) -> None:
        """A bound port that the template does not declare, or declares as the other kind."""
        info = inputs.get(port)
        if info is None:
            declared = sorted(n for n, i in inputs.items() if i.kind == kind)
            self.problem(
                f"{where}: binds {kind[:-1]} {port!r}, which its template does not "
                f"declare (declared {kind}: {declared or 'none'})"
            )
        else:
            what = "an artifact" if info.kind == "artifacts" else "a parameter"
            self.problem(
                f"{where}: {port!r} is {what} port; bind it in {info.kind}= instead of {kind}="
            )

    def output_binding(
        self,
        ct: CompiledTemplate,
        binding: Binding,
        info: PortInfo,
        sliced: bool,
        where: str,
        reader: int,
    ) -> _Pending:
        """Link a binding of one step's output (typed ``info``) to the node producing it and
        check the types. Returns what references() is left to do for the reference: only to
        note the producer's name once the producer is found, compiled and has that output
        (check_ref() would look all that up again to report nothing), else its scan."""
        ref: OutputRef = binding.value
        producer = self._producer(ct, ref)
        if producer is None:  # reported by check_ref()
            return ((ref,), (), False)  # what scan() finds, without the walk
        binding.source = (producer.index, ref.kind, ref.name)
        if self.producer_type(ct, binding.port, info, ref, producer, where, sliced, reader):
            return ref.step.name
        return ((ref,), (), False)

    def producer_type(
        self,
        ct: CompiledTemplate,
        port: str,
        info: PortInfo,
        ref: OutputRef,
        producer: CompiledStep,
        where: str,
        sliced: bool,
        reader: int,
    ) -> bool:
        """Whether the type ``producer`` (the node of the step ``ref`` reads) declares for
        that output can feed ``port`` (typed ``info``). ``reader`` is as for check_ref().
        Returns whether ``producer`` was compiled and has that output (a mismatch of types
        is reported here; anything else by check_ref())."""
        if producer.index > reader:  # not compiled yet: checked after the template's steps
            later = partial(
                self.producer_type, ct, port, info, ref, producer, where, sliced, ct.n_steps
            )
            self._later.append(later)
            return False
        out = producer.outputs.get(ref.name)
        if out is None or out.kind != ref.kind:
            return False  # reported by check_ref()
        produced: Any = out.type
        if producer.fan_out:
            produced = list[produced]
        consumed: Any = list[info.type] if sliced else info.type  # type: ignore[name-defined]
        # the same type on both ends (as along a chain of one OP): compatible without asking
        if produced is not consumed and not is_compatible(produced, consumed):
            # the stacked and sliced cases say so: "expects int but ... is int" would puzzle
            expects = describe(info.type)
            if sliced:
                expects = f"a list of {expects} (it is sliced)"
            given = describe(out.type)
            if producer.fan_out:
                given = f"a list of {given} (one per slice: it fans out)"
            self.problem(
                f"{where}: input {port!r} expects {expects} but step {ref.step.name!r} output "
                f"{ref.name!r} is {given}"
            )
        return True

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
                self.problem(
                    f"{where}: Slices names output {port!r}, which the OP does not declare"
                )
        if not sl.sliced_inputs and step.with_param is None:
            self.problem(f"{where}: Slices needs input_parameter/input_artifact or with_param")
        if node.sub is not None and sl.group_size:
            self.problem(f"{where}: group_size applies to OP steps, not to Steps/DAG templates")
        self.sliced_literals(node, sl, bound, where)

    def sliced_literals(self, node: CompiledStep, sl: Slices, bound: set[str], where: str) -> None:
        """Sliced inputs bound to literals are known now: each must be a list, of elements
        the port takes, and (when the slices are counted from them, without with_param) of
        one length."""
        step = node.step
        assert step is not None
        lengths: dict[str, int] = {}
        for port in sl.sliced_inputs:
            info = node.inputs.get(port)
            if info is None or port not in bound or port not in node.const_inputs:
                continue  # reported above, or a reference: known at run time only
            value = node.const_inputs[port]
            if value is None and info.default is None:
                continue  # an optional input left out: every slice gets None (as in Dflow)
            if not isinstance(value, list | tuple):
                self.problem(
                    f"{where}: sliced input {port!r} must be bound to a list (one element per "
                    f"slice), got {type(value).__name__} ({value!r:.60})"
                )
                continue
            lengths[port] = len(value)
            if info.kind != "parameters":
                continue  # local paths are checked by bindings()
            misfit = _first_misfit(info.type, value)
            if misfit is not None:
                i, element = misfit
                self.problem(
                    f"{where}: sliced input {port!r} takes elements of type "
                    f"{describe(info.type)}, but element {i} is "
                    f"{type(element).__name__} ({element!r:.60})"
                )
        if step.with_param is None and len(set(lengths.values())) > 1:
            self.problem(
                f"{where}: sliced inputs have different lengths ({lengths}); each slice takes "
                "one element of every sliced input: bind lists of one length"
            )

    def with_param(self, ct: CompiledTemplate, node: CompiledStep, where: str, reader: int) -> None:
        """Inputs bound to the item itself take the elements of ``with_param``: when their
        type is known (a typed list output or template input), it must fit. ``reader`` is as
        for check_ref()."""
        step = node.step
        assert step is not None
        value = step.with_param
        takers = [b for b in node.item_bindings if type(b.value) is ItemRef and not b.value.path]
        if not _is_dynamic(value):
            self.literal_items(node, value, takers, where)
            return
        if not takers:
            return
        if type(value) is OutputRef:
            producer = self._producer(ct, value)
            if producer is None:  # reported by check_ref()
                return
            if producer.index > reader:  # not compiled yet: checked after the template's steps
                self._later.append(partial(self.with_param, ct, node, where, ct.n_steps))
                return
            out = producer.outputs.get(value.name)
            if out is None or out.kind != value.kind:  # reported by check_ref()
                return
            container: Any = list[out.type] if producer.fan_out else out.type  # type: ignore[name-defined]
            source = f"step {value.step.name!r} output {value.name!r}"
        elif isinstance(value, _InputRef) and value.template is ct.template:
            declared = ct.inputs.get(value.name)
            if declared is None:
                return
            container, source = declared.type, f"input {value.name!r}"
        else:
            return
        element = item_type(container)
        if element is None:
            return
        for b in takers:
            expected = node.inputs[b.port].type
            if not is_compatible(element, expected):
                self.problem(
                    f"{where}: input {b.port!r} takes the item of with_param, whose elements "
                    f"are {describe(element)} ({source} is {describe(container)}), but it "
                    f"expects {describe(expected)}"
                )

    def literal_items(
        self, node: CompiledStep, value: Any, takers: list[Binding], where: str
    ) -> None:
        """A literal ``with_param``: its items are known now. It must be iterable (a string is
        read as JSON, as at run time), and the inputs bound to the item must take them."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                self.problem(f"{where}: with_param is a string but not a JSON list: {exc}")
                return
        try:
            iter(value)  # never list(): that would use up an iterator the run needs
        except TypeError:
            self.problem(
                f"{where}: with_param must be a list (or a reference to one) to fan out over, "
                f"got {type(value).__name__} ({value!r:.60})"
            )
            return
        items = value if isinstance(value, list | tuple) else ()
        for b in takers:
            info = node.inputs[b.port]
            if info.kind != "parameters":
                continue
            misfit = _first_misfit(info.type, items)
            if misfit is not None:
                i, element = misfit
                self.problem(
                    f"{where}: input {b.port!r} takes the item of with_param and expects "
                    f"{describe(info.type)}, but item {i} is {type(element).__name__} "
                    f"({element!r:.60})"
                )

    def references(
        self, ct: CompiledTemplate, node: CompiledStep, where: str, binding_scans: list[_Pending]
    ) -> None:
        step = node.step
        assert step is not None
        when, with_param, key = step.when, step.with_param, step.key
        scans = binding_scans
        own_item = False  # whether when, with_param or key uses the item
        if when is not None or with_param is not None or key is not None:
            if when is not None and not isinstance(when, Ref | bool):
                self.when_value(when, where)
            own = [scan(v) for v in (when, with_param, key) if v is not None]
            own_item = any(item for _, _, item in own)
            scans = [*own, *binding_scans]
        producers: set[str] = set()
        for found in scans:
            if isinstance(found, str):  # a reference bindings() has checked: its producer's name
                producers.add(found)
                continue
            refs, paths, _ = found
            for ref in refs:
                self.check_ref(ct, ref, where, node.index)
                if isinstance(ref, OutputRef):
                    producers.add(ref.step.name)
            if paths:
                for name in path_steps(paths):
                    producers.add(name)
                    if name not in ct.by_name:
                        self.problem(f"{where}: placeholder refers to unknown step {name!r}")
                self.placeholder_targets(ct, paths, where, node.index)
        by_name = ct.by_name
        for dep in step.dependencies:
            name = dep.name if isinstance(dep, Step) else dep
            producers.add(name)
            if name not in by_name:
                self.problem(f"{where}: depends on {name!r}, which is not a step of {ct.name!r}")
        if producers:
            node.producers = producers
        if with_param is not None and isinstance(with_param, ItemRef):  # most have none
            self.problem(f"{where}: with_param cannot be the item itself")
        # a binding's value uses the item exactly when it is one of the item_bindings
        if not node.fan_out and (own_item or node.item_bindings):
            self.problem(f"{where}: uses item but has neither with_param nor slices")

    def placeholder_targets(
        self, ct: CompiledTemplate, paths: Sequence[str], where: str, reader: int
    ) -> None:
        """``{{steps.a.outputs.parameters.n}}`` in a string must name an output step ``a``
        has, and ``{{inputs.parameters.n}}`` an input of the step's own template (Dflow's
        and Argo's scope), as a reference must: at run time an undeclared one reads as not
        produced, and skips the step silently. ``reader`` as for :meth:`check_ref`."""
        for path in paths:
            parts = path.split(".")
            if len(parts) == 3 and parts[0] == "inputs" and parts[1] in ("parameters", "artifacts"):
                self.placeholder_input(ct, parts[1], parts[2], path, where)
                continue
            if (
                len(parts) != 5
                or parts[0] not in ("steps", "tasks")
                or parts[2] != "outputs"
                or parts[3] not in ("parameters", "artifacts")
            ):
                continue
            idx = ct.by_name.get(parts[1])
            if idx is None:
                continue  # an unknown step: reported
            producer = ct.nodes[idx]
            if producer.index > reader:  # not compiled yet: checked after the template's steps
                self._later.append(partial(self.placeholder_targets, ct, [path], where, ct.n_steps))
                continue
            if producer.op is None and producer.sub is None:
                continue  # its OP failed to load (reported): its outputs are unknown
            kind, name = parts[3], parts[4]
            out = producer.outputs.get(name)
            if out is None or out.kind != kind:
                have = sorted(n for n, i in producer.outputs.items() if i.kind == kind)
                self.problem(
                    f"{where}: placeholder {{{{{path}}}}}: step {parts[1]!r} has no output "
                    f"{kind[:-1]} {name!r} (it has: {have or 'none'})"
                )

    def placeholder_input(
        self, ct: CompiledTemplate, kind: str, name: str, path: str, where: str
    ) -> None:
        info = ct.inputs.get(name)
        if info is not None and info.kind == kind:
            return
        have = sorted(n for n, i in ct.inputs.items() if i.kind == kind)
        # the usual slip: meaning the step's own parameter, as in a key
        hint = (
            "; a step's placeholders see the inputs of the template holding it (as in "
            "Dflow), not the step's own parameters: embed what the parameter is bound to "
            "instead, e.g. key=f\"run-{other.outputs.parameters['x']}\""
        )
        self.problem(
            f"{where}: placeholder {{{{{path}}}}} names input {kind[:-1]} {name!r} of "
            f"template {ct.name!r}, which declares none such (it has: {have or 'none'}){hint}"
        )

    def when_value(self, when: Any, where: str) -> None:
        """A ``when=`` that is neither a reference nor a bool: a condition string is parsed
        now, a callable's signature checked; what the step would fail on when its turn
        comes, after the steps before it ran, is reported with every other problem."""
        if isinstance(when, str):
            problem = check_condition(when)
            if problem is not None and problem.startswith("cannot parse"):
                problem += (
                    "; a condition compares placeholders and literals, e.g. "
                    "\"{{steps.a.outputs.parameters.n}} < 3 && '{{inputs.parameters.mode}}' "
                    "== 'fast'\""
                )
            if problem is not None:
                self.problem(f"{where}: when= {problem}")
        elif callable(when):
            self.when_callable(when, where)
        else:
            self.problem(
                f"{where}: when= must be a condition (references compared: "
                "a.outputs.parameters['n'] < 3), a condition string, a callable taking the "
                f"step's inputs, or a bool; got {type(when).__name__} ({when!r:.60})"
            )

    def when_callable(self, when: Callable[..., Any], where: str) -> None:
        """A ``when=`` callable is called with one dict of the step's inputs: one that cannot
        take it would fail the step when its turn comes, after the steps before it ran."""
        try:
            signature = inspect.signature(when)
        except (TypeError, ValueError):  # some builtins and C callables: cannot tell
            return
        try:
            signature.bind({})
        except TypeError:
            name = getattr(when, "__qualname__", type(when).__qualname__)
            self.problem(
                f"{where}: when= callable must take one argument (a dict of the step's "
                f"inputs), but {name}{signature} does not; e.g. when=lambda inputs: "
                "inputs['x'] > 0"
            )

    def check_ref(self, ct: CompiledTemplate, ref: Ref, where: str, reader: int) -> None:
        """``reader``: the index of the node reading ``ref``; the steps up to it are compiled
        (all of them for ``ct.n_steps``)."""
        if isinstance(ref, OutputRef):  # the most common: tested first
            producer = self._producer(ct, ref)
            if producer is None:
                self.problem(
                    f"{where}: refers to step {ref.step.name!r}, which is not a step of "
                    f"{ct.name!r} (add it to the same Steps/DAG)"
                )
                return
            if producer.index > reader:  # not compiled yet: checked after the template's steps
                self._later.append(partial(self.check_ref, ct, ref, where, ct.n_steps))
                return
            if producer.op is None and producer.sub is None:
                return  # its OP failed to load (reported): its outputs are unknown
            out = producer.outputs.get(ref.name)
            if out is None or out.kind != ref.kind:
                kinds = [n for n, i in producer.outputs.items() if i.kind == ref.kind]
                self.problem(
                    f"{where}: step {ref.step.name!r} has no output {ref.kind[:-1]} "
                    f"{ref.name!r} (it has: {sorted(kinds) or 'none'})"
                )
        elif isinstance(ref, _InputRef) and ref.template is not ct.template:
            owner = ref.template.name if ref.template else "no template"
            self.problem(
                f"{where}: refers to input {ref.name!r} of {owner!r}, but the step belongs "
                f"to {ct.name!r}; pass the value in as an input of {ct.name!r}"
            )

    @staticmethod
    def _producer(ct: CompiledTemplate, ref: OutputRef) -> CompiledStep | None:
        """The node of the step ``ref`` reads, if that step is in ``ct``."""
        idx = ct.by_name.get(ref.step.name)
        if idx is None:
            return None
        producer = ct.nodes[idx]
        return producer if producer.step is ref.step else None

    # ------------------------------------------------------------------ edges

    def edges(self, ct: CompiledTemplate) -> None:
        tpl = ct.template
        is_dag = isinstance(tpl, DAG)
        group_of: dict[int, int] = {}  # id(step) -> its group in a Steps template
        if not is_dag:
            for g, group in enumerate(tpl.groups):
                for s in group:
                    group_of.setdefault(id(s), g)
        nodes, by_name = ct.nodes, ct.by_name
        backward = False  # an edge to an earlier node: without one, no cycle
        # straight into successor lists and counters: each node's producers are a set, so
        # every edge comes once
        for node in nodes[: ct.n_steps]:
            me = node.index
            for name in node.producers:
                idx = by_name.get(name)
                if idx is None:
                    continue
                if idx == me:
                    self.problem(f"step {ct.name}.{node.name}: depends on its own outputs")
                    continue
                if not is_dag and group_of[id(nodes[idx].step)] >= group_of[id(node.step)]:
                    self.problem(
                        f"step {ct.name}.{node.name}: uses step {name!r}, which runs in the same "
                        f"or a later group of Steps {ct.name!r}; add it after {name!r}"
                    )
                    continue
                nodes[idx].succs.append(me)
                node.npreds += 1
                if idx > me:
                    backward = True
        if not is_dag:
            self.barriers(ct)
        ct.roots = [n.index for n in nodes if n.npreds == 0]
        # nodes are numbered in the order the steps were added: if every edge of a DAG leads
        # to a later node, that order is topological and Kahn's count can only agree (a Steps
        # template's barriers lead back to earlier nodes: counted always)
        if (backward or not is_dag) and not _acyclic(ct):
            # counters found a cycle; networkx names it for the message
            graph = nx.DiGraph([(n.index, s) for n in nodes for s in n.succs])
            cycle = nx.find_cycle(graph)
            names = [nodes[a].name for a, _ in cycle] + [nodes[cycle[0][0]].name]
            kind = "DAG" if is_dag else "Steps"
            self.problem(f"{kind} {ct.name!r} has a cycle: {' -> '.join(names)}")

    def barriers(self, ct: CompiledTemplate) -> None:
        """Steps groups run in order: a barrier node between consecutive groups keeps the edge
        count linear (n + m instead of n * m for two wide groups)."""
        groups = ct.template.groups
        for g in range(1, len(groups)):
            barrier = CompiledStep(len(ct.nodes), f"<group {g}>", None)
            ct.nodes.append(barrier)
            for s in groups[g - 1]:
                idx = self._node_of(ct, s)
                if idx is not None:
                    ct.nodes[idx].succs.append(barrier.index)
                    barrier.npreds += 1
            for s in groups[g]:
                idx = self._node_of(ct, s)
                if idx is not None:
                    barrier.succs.append(idx)
                    ct.nodes[idx].npreds += 1

    @staticmethod
    def _node_of(ct: CompiledTemplate, step: Step) -> int | None:
        idx = ct.by_name.get(step.name)
        return idx if idx is not None and ct.nodes[idx].step is step else None

    def template_outputs(self, ct: CompiledTemplate) -> None:
        for name, (info, source) in ct.outputs.items():
            where = f"template {ct.name!r} output {name!r}"
            if source is None and info.default is MISSING:
                self.problem(
                    f"{where}: has neither a source (value_from_parameter/_from) nor a default"
                )
            for ref in iter_refs(source):
                self.check_ref(ct, ref, where, ct.n_steps)
            for step_name in string_steps(source):
                if step_name not in ct.by_name:
                    self.problem(f"{where}: placeholder refers to unknown step {step_name!r}")


def walk_templates(root: CompiledTemplate) -> Iterator[CompiledTemplate]:
    """``root`` and every template its steps use, each once (recursion included), depth
    first in step order."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        ct = todo.pop()
        if id(ct) in seen:
            continue
        seen.add(id(ct))
        yield ct
        todo.extend(node.sub for node in ct.nodes if node.sub is not None)


def definition_digest(root: CompiledTemplate) -> str:
    """A digest of what the workflow does: templates, steps, OPs and bound inputs. Resume
    refuses a run whose definition changed, since its recorded outputs may no longer apply."""
    import hashlib

    # One text, hashed at the end: the same digest as hashing each part in turn (which runs
    # before must keep matching), for much less per step. OP names are worked out once per
    # OP (or OP class: class templates get an instance per step).
    parts: list[str] = []
    names: dict[Any, str] = {}
    for ct in walk_templates(root):
        inputs = sorted((n, repr(i.default)) for n, i in ct.inputs.items())
        outputs = sorted((n, repr(_canon(src))) for n, (_, src) in ct.outputs.items())
        parts.append(repr((ct.name, inputs, outputs)))
        for node in ct.nodes[: ct.n_steps]:
            step = node.step
            assert step is not None
            op = node.op
            if node.sub is not None:
                what = f"template:{node.sub.name}"
            elif op is None:  # an OP that failed to load (validation reports it)
                what = "?@"
            else:
                which = op if isinstance(op, FunctionOP) else type(op)
                name = names.get(which)
                if name is None:
                    name = names[which] = _stable_op_name(op)
                what = f"{name}@{getattr(op, 'version', '')}"
            # A step's text is, as it always was, repr() of the tuple (node.name, what,
            # bindings, when, key, with_param, repr(step.slices), sorted(node.producers)),
            # bindings a list of (port, _canon(value)) pairs; here it is written out. A tuple's
            # repr is "(" + its items' reprs joined by ", " + ")" (a list's the same in
            # brackets), and writing that out skips the recursion guard CPython's repr runs for
            # each tuple and list: a third of the digest's time, for containers built right
            # here that can never contain themselves. Anything else is still repr()'d.
            bound = []  # a loop, not a comprehension: one frame less per step on 3.11
            for port, value in step.parameters.items():
                bound.append(f"({port!r}, {_canon(value)!r})")
            if step.artifacts:
                for port, value in step.artifacts.items():
                    bound.append(f"({port!r}, {_canon(value)!r})")
            when, key, with_param, slices = step.when, step.key, step.with_param, step.slices
            if when is None and key is None and with_param is None and slices is None:
                options = _NO_OPTIONS  # most steps
            else:
                options = ", ".join(
                    [
                        repr(when if when is None else _canon(when)),
                        repr(key if key is None or type(key) is str else _canon(key)),
                        repr(with_param if with_param is None else _canon(with_param)),
                        repr(repr(slices)),
                    ]
                )
            producers = node.producers
            if not producers:
                deps = "[]"
            elif len(producers) == 1:  # a chain's: sorted() of one name is a list of it
                (only,) = producers
                deps = f"[{only!r}]"
            else:
                deps = repr(sorted(producers))
            parts.append(f"({node.name!r}, {what!r}, [{', '.join(bound)}], {options}, {deps})")
    return "sha256:" + hashlib.sha256("".join(parts).encode()).hexdigest()


# when, key, with_param and slices of a step that has none of them, as the digest writes them
_NO_OPTIONS = ", ".join([repr(None), repr(None), repr(None), repr(repr(None))])


def _stable_op_name(op: OP) -> str:
    """The OP's name as the same file gives it however it is run: ``python flow.py`` names
    its OPs ``__main__.f``, ``dflow-async run flow.py`` and ``import flow`` name them
    ``flow.f``; a resume may come either way."""
    name = op_name(op)
    if name.startswith("__main__."):
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file:
            name = os.path.splitext(os.path.basename(main_file))[0] + name[len("__main__") :]
    return name


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _canon(value: Any) -> Any:
    """A bound value as the definition digest records it (the digest text holds its repr)."""
    # Exact types first: most bound values are one step's output or a plain literal, and
    # isinstance() against a union costs several times a type lookup.
    cls = type(value)
    if cls is OutputRef:  # (the placeholder text has one definition: OutputRef's)
        return value.placeholder()
    if cls in _PLAIN:
        return value
    # Everything else (subclasses included) as before.
    if value is None or isinstance(value, int | float | str | bool):
        return value
    if isinstance(value, Ref):
        return value.placeholder()
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def _acyclic(ct: CompiledTemplate) -> bool:
    """Kahn's algorithm on the precomputed counters: O(nodes + edges)."""
    remaining = [n.npreds for n in ct.nodes]
    todo = list(ct.roots)
    seen = 0
    while todo:
        idx = todo.pop()
        seen += 1
        for s in ct.nodes[idx].succs:
            remaining[s] -= 1
            if remaining[s] == 0:
                todo.append(s)
    return seen == len(ct.nodes)


def as_networkx(ct: CompiledTemplate) -> nx.DiGraph:
    """The template's steps as a networkx graph (barriers folded away), for export and tools."""
    graph = nx.DiGraph()
    for node in ct.nodes[: ct.n_steps]:
        graph.add_node(node.name, sub=node.sub.name if node.sub else None)

    def real_succs(idx: int) -> set[int]:
        found: set[int] = set()
        for s in ct.nodes[idx].succs:
            found.update([s] if ct.nodes[s].step is not None else real_succs(s))
        return found

    for node in ct.nodes[: ct.n_steps]:
        for s in real_succs(node.index):
            graph.add_edge(node.name, ct.nodes[s].name)
    return graph


_LITERALS = frozenset({int, float, bool, type(None)})


def _is_dynamic(value: Any) -> bool:
    """Whether a bound value holds references or placeholders (else it is a constant)."""
    if type(value) in _LITERALS:
        return False
    if isinstance(value, Ref):
        return True
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, list | tuple):
        return any(_is_dynamic(v) for v in value)
    if isinstance(value, dict):
        return any(_is_dynamic(v) for v in value.values())
    return False


def _first_misfit(tp: Any, elements: Iterable[Any]) -> tuple[int, Any] | None:
    """The first element (not None: a failed slice's hole) that ``tp`` cannot take, with its
    index; one is enough to say what is wrong."""
    for i, element in enumerate(elements):
        if element is not None and not matches(tp, element):
            return i, element
    return None


def compile_template(
    entry: Template,
    *,
    default_executor: Any,
    check_executor: ExecutorCheck,
    provided: frozenset[str] = frozenset(),
    parameters_option: str | None = None,
) -> tuple[CompiledTemplate, list[str]]:
    """Compile ``entry`` and every template it uses; returns the problems found (all of them).
    ``provided`` names the entry inputs the run is given values for; ``parameters_option``
    the command-line option that gives them (``--param``), when they do not come from Python."""
    compiler = _Compiler(default_executor, check_executor)
    compiled = compiler.template(entry)
    if compiler.literal_keyed:
        compiler.repeated_keys(compiled)
    for name, info in compiled.inputs.items():
        if info.default is MISSING and name not in provided:
            given = (
                f"with {parameters_option} {name}=VALUE"
                if parameters_option
                else "to run(parameters=...)"
            )
            compiler.problem(
                f"workflow entry {entry.name!r}: input {name!r} has no value; give it a default "
                f"(inputs={{{name!r}: ...}}) or pass it {given}"
            )
    return compiled, compiler.problems
