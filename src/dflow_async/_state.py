"""The run's state machine: events in, instructions out, no I/O but one: a BigParameter the
scheduler itself computes with (a condition, a fan-out's items, a key) is read from the store
(:meth:`_Using.load`).

The asyncio shell (:mod:`dflow_async._scheduler`) feeds it attempt outcomes and carries out the
instructions it returns (launch an attempt, retry one after a delay, finish). All bookkeeping is
O(1) per event: predecessor counters are decremented, never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dflow_async._compile import CompiledStep, CompiledTemplate
from dflow_async._op import MISSING
from dflow_async._records import StepRecord
from dflow_async._refs import Ref, Scope, Unavailable, evaluate, render, safe_condition
from dflow_async._spec import AttemptSpec, Failed, SliceInput
from dflow_async._stored import BigValue, InputFetchError, holds_big, read_big, with_values

__all__ = ["Finish", "Retry", "RunState", "Unit"]

SKIPPED: Any = "<skipped>"
FAILED: Any = "<failed>"

EventHook = Callable[[str, StepRecord, dict[str, Any]], None]
UnitHook = Callable[[StepRecord, int, Sequence[Any]], None]  # (step, unit number, slice outputs)


@dataclass(slots=True, eq=False)
class Unit:
    """One attempt of a group of slices of an OP step."""

    sr: StepRun
    number: int  # unit index within the step
    slice_ids: range
    attempt: int
    spec: AttemptSpec


@dataclass(slots=True)
class Retry:
    unit: Unit
    delay: float


@dataclass(slots=True)
class Finish:
    status: str


# a Unit in the instructions means: launch it (no wrapper: one object fewer per attempt)
Instruction = Unit | Retry | Finish

_ONE = range(1)  # the unit ids of a step that is not a fan-out
# shared empty containers a StepRun holds until it needs its own: never written to
_NO_VALUES: dict[str, Any] = {}
_NO_CHILDREN: list[Any] = []
_NO_OUTPUTS: list[Any] = []


class TemplateRun:
    """One execution of a Steps/DAG template; implements the evaluation scope."""

    __slots__ = (
        "ct",
        "depth",
        "failing",
        "held",
        "inputs",
        "limit",
        "n_active",
        "parent",
        "path",
        "pending",
        "remaining",
        "results",
        "running",
        "runs",
        "unit_index",
    )

    def __init__(
        self,
        ct: CompiledTemplate,
        inputs: dict[str, Any],
        parent: StepRun | None,
        path: str,
        unit_index: int = 0,
    ) -> None:
        self.ct = ct
        self.inputs = inputs
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.trun.depth + 1
        self.path = path
        self.unit_index = unit_index
        # Steps/DAG(parallelism=n): attempts of this run's own steps at once (a sub-workflow
        # step's children count against their own template's limit)
        self.limit: int | None = getattr(ct.template, "parallelism", None)
        self.running = 0
        self.held: deque[StepRun] | None = deque() if self.limit is not None else None
        self.remaining = [n.npreds for n in ct.nodes]
        self.results: list[Any] = [None] * len(ct.nodes)
        self.runs: list[StepRun | None] = [None] * len(ct.nodes)
        self.pending = len(ct.nodes)  # nodes not done yet
        self.n_active = 0  # step runs started and not finished
        self.failing = False

    # Scope protocol
    def input_value(self, name: str, kind: str) -> Any:
        try:
            return self.inputs[name]
        except KeyError:
            raise Unavailable(f"template {self.ct.name!r} has no input {name!r}") from None

    def output_value(self, step: str, name: str, kind: str) -> Any:
        idx = self.ct.by_name.get(step)
        result = self.results[idx] if idx is not None else None
        if result is None or result is SKIPPED or result is FAILED:
            if result is not None and idx is not None:
                info = self.ct.nodes[idx].outputs.get(name)
                if info is not None and info.default is not MISSING:
                    return info.default  # Argo's rule: a skipped step's output falls back
            state = {None: "not finished", SKIPPED: "skipped"}.get(result, "failed")
            raise Unavailable(f"step {step!r} is {state}")
        value = result[kind].get(name, MISSING)
        if value is MISSING:
            raise Unavailable(f"step {step!r} produced no {name!r}")
        return value

    def item_value(self) -> Any:
        raise Unavailable("item is only defined in a fan-out step")


class _ItemScope:
    __slots__ = ("base", "item")

    def __init__(self, base: Scope, item: Any) -> None:
        self.base = base
        self.item = item

    def input_value(self, name: str, kind: str) -> Any:
        return self.base.input_value(name, kind)

    def output_value(self, step: str, name: str, kind: str) -> Any:
        return self.base.output_value(step, name, kind)

    def item_value(self) -> Any:
        return self.item


class _Using:
    """The scope of what the scheduler itself computes with for a step (its condition, its
    fan-out's items, its key): BigParameter values come loaded, each once for the step.
    Elsewhere they stay BigValues (references), and the workers load those their OPs take."""

    __slots__ = ("loaded", "sr", "store")

    def __init__(self, sr: StepRun, store: Any) -> None:
        self.sr = sr
        self.store = store
        self.loaded: dict[str, Any] | None = None  # by digest

    def input_value(self, name: str, kind: str) -> Any:
        return self.loaded_value(
            self.sr.trun.input_value(name, kind), f"the template input {name!r}"
        )

    def output_value(self, step: str, name: str, kind: str) -> Any:
        value = self.sr.trun.output_value(step, name, kind)
        return self.loaded_value(value, f"the output {name!r} of step {step!r}")

    def loaded_value(self, value: Any, what: str) -> Any:
        """``value`` with its BigValues loaded: itself one, or in a list or dict (a fan-out
        stacks its slices' BigParameter outputs into a list)."""
        t = type(value)
        if t is BigValue:
            return self.load(value, what)
        if (t is list or t is dict or t is tuple) and holds_big(value):
            return with_values(value, lambda big: self.load(big, what))
        return value

    def item_value(self) -> Any:
        return self.sr.trun.item_value()

    def load(self, big: BigValue, what: str) -> Any:
        """The one place the state machine does I/O: a blocking read from the store (a file
        read for a local one, a request for S3) on whatever thread drives the run, the event
        loop's included. The value is kept only while the step's scheduling needs it."""
        loaded = self.loaded
        if loaded is None:
            loaded = self.loaded = {}
        digest = big.ref.digest
        if digest not in loaded:
            try:
                loaded[digest] = read_big(big, self.store)
            except Exception as exc:  # network errors come in many types
                raise InputFetchError(
                    f"step {self.sr.record.path!r} could not load {what}, a BigParameter, "
                    f"from the store: {exc}"
                ) from None
        return loaded[digest]


class StepRun:
    """One execution of one step node inside a template run."""

    __slots__ = (
        "children",
        "common",
        "done_units",
        "failed",
        "finished",
        "indices",
        "inflight",
        "items",
        "n_slices",
        "n_units",
        "next_unit",
        "node",
        "queued",
        "record",
        "running",
        "slice_outputs",
        "slice_records",
        "trun",
    )

    def __init__(self, trun: TemplateRun, node: CompiledStep, record: StepRecord) -> None:
        self.trun = trun
        self.node = node
        self.record = record
        # common, slice_outputs: set by RunState._prepare; children: by _start_child. Shared
        # empty ones until then: a StepRun is built per step, and most never need their own
        self.common: dict[str, Any] = _NO_VALUES
        self.items: list[Any] | None = None  # fan-out items
        self.indices: list[int] | None = None  # which element of sliced inputs each item takes
        self.n_slices = 1
        self.n_units = 1
        self.next_unit = 0
        self.running = 0  # launched and not finished (excludes pending retries)
        self.inflight = 0  # running + waiting for a retry
        self.done_units = 0
        self.failed = False  # a failure the step cannot tolerate: launch nothing more
        self.finished = False
        self.children: list[TemplateRun] = _NO_CHILDREN
        self.queued = False
        self.slice_outputs: list[Any] = _NO_OUTPUTS
        self.slice_records: list[StepRecord] | None = None  # when the key differs per slice

    @property
    def stopped(self) -> bool:
        return self.failed or self.trun.failing


class RunState:
    """Everything the scheduler decides, as plain method calls returning instructions."""

    def __init__(
        self,
        root: CompiledTemplate,
        *,
        run_id: str,
        run_dir: str,
        inputs: dict[str, Any] | None = None,
        parallelism: int | None = None,
        on_event: EventHook | None = None,
        on_unit: UnitHook | None = None,
        restored: Sequence[StepRecord] = (),
        restored_units: dict[str, dict[int, list[Any]]] | None = None,
        reuse: Sequence[StepRecord] = (),
        attempt_suffix: str = "",
        store: Any = None,
    ) -> None:
        self.root_ct = root
        self.run_id = run_id
        self.run_dir = run_dir.rstrip("/")
        self.parallelism = parallelism
        self.on_event = on_event
        self.on_unit = on_unit
        # unit_done events (a fan-out's progress) are for hooks only: a run whose on_event is
        # its journal's recorder alone sets this False (a call per unit for nothing)
        self.unit_events = True
        self.attempt_suffix = attempt_suffix
        # a first attempt's work dir is <steps dir><step path><first>: built per step
        self._steps_dir = f"{self.run_dir}/steps/"
        self._first_attempt = f"/a0{attempt_suffix}"
        self.store = store
        # resume: what an earlier driver of this run finished, by path
        self.restored = {r.path: r for r in restored if r.phase == "Succeeded"}
        # ...and where its unfinished steps' attempts ran (their logs stay listed)
        self.earlier = {r.path: r for r in restored if r.phase != "Succeeded"}
        self.restored_slices: dict[str, list[StepRecord]] = {}
        for r in restored:
            parent, sep, rest = r.path.rpartition("[")
            if sep and rest[:-1].isdigit() and parent in self.restored:
                self.restored_slices.setdefault(parent, []).append(r)
        self.restored_units = restored_units or {}
        # reuse_step: finished records of other runs, by key
        self.reuse = {r.key: r for r in reuse if r.key is not None and r.phase == "Succeeded"}
        self.records: list[StepRecord] = []
        # key -> the path of the execution it names (validation refuses repeated literal
        # keys; a rendered one repeating, a loop's key missing its iteration, shows here)
        self.keys: dict[str, str] = {}
        self.ready: deque[StepRun] = deque()
        self.retries: deque[Unit] = deque()
        self.running = 0
        self.status = "Running"
        self.outputs: dict[str, dict[str, Any]] = {"parameters": {}, "artifacts": {}}
        self._initial_inputs = dict(inputs or {})
        self.root: TemplateRun | None = None
        # nodes that became ready and templates that completed, handled in a loop rather than
        # by recursion: a 10,000-group Steps or a 1,000-iteration loop must not hit the stack
        self._todo: deque[tuple[TemplateRun, int]] = deque()

    # ------------------------------------------------------------------ events in

    def start(self) -> list[Instruction]:
        out: list[Instruction] = []
        inputs = {n: i.default for n, i in self.root_ct.inputs.items()}
        inputs.update(self._initial_inputs)
        self.root = TemplateRun(self.root_ct, inputs, None, "")
        self._start_template(self.root, out)
        self._pump(out)
        return out

    def unit_finished(self, unit: Unit, outcome: Any) -> list[Instruction]:
        out: list[Instruction] = []
        sr = unit.sr
        self.running -= 1
        sr.running -= 1
        sr.record.attempts += 1
        trun = sr.trun
        trun.running -= 1
        if trun.held:
            self._release_held(trun)
        if outcome.ok:
            if sr.items is None:
                sr.inflight -= 1
                sr.done_units += 1
                if outcome.outputs:
                    sr.slice_outputs[0] = outcome.outputs[0]
                sr.record.workdirs.append(unit.spec.slices[0].workdir)
                self._maybe_finish_step(sr, out)
            else:
                workdirs = [p.workdir for p in unit.spec.slices]
                self._unit_ok(
                    sr, unit.number, unit.slice_ids, unit.attempt, workdirs, outcome.outputs, out
                )
        else:
            self._unit_failed(unit, outcome, out)
        if not sr.queued and sr.next_unit < sr.n_units and not sr.stopped:
            sr.queued = True  # it left the queue at its pool_size; it has units left
            self.ready.appendleft(sr)
        self._pump(out)
        return out

    def _release_held(self, trun: TemplateRun) -> None:
        """A slot of the template's parallelism is free: the first waiting step may go."""
        held = trun.held
        assert held is not None
        while held:
            sr = held.popleft()
            if not sr.finished and not sr.stopped:
                self.ready.appendleft(sr)
                return
            sr.queued = False  # it finished (its template failed) while it waited

    def _unit_ok(
        self,
        sr: StepRun,
        number: int,
        ids: range,
        attempt: int,
        workdirs: list[str],
        outputs: Sequence[dict[str, Any]],
        out: list[Instruction],
    ) -> None:
        sr.inflight -= 1
        sr.done_units += 1
        base = ids.start
        for offset, values in enumerate(outputs):
            sr.slice_outputs[base + offset] = values
        if sr.slice_records is None:  # (else each slice's record keeps its own)
            sr.record.workdirs.extend(workdirs)
        if sr.items is not None:
            if sr.slice_records is not None:
                self._slices_done(sr, ids, attempt, workdirs, "Succeeded", outputs)
            if self.on_unit is not None:
                self.on_unit(sr.record, number, outputs)
            if self.unit_events and self.on_event is not None:  # for progress displays
                self._emit("unit_done", sr.record, {"slices": len(ids), "of": sr.n_slices})
        self._maybe_finish_step(sr, out)

    def retry_due(self, unit: Unit) -> list[Instruction]:
        out: list[Instruction] = []
        self.retries.append(unit)
        self._pump(out)
        return out

    def cancel(self) -> None:
        """The shell was cancelled: mark what was running as Cancelled."""
        for rec in self.records:
            if rec.phase in ("Running", "Pending"):
                rec.phase = "Cancelled"
                rec.end = time.time()
                self._emit("cancelled", rec, {})
        self.status = "Cancelled"

    # ------------------------------------------------------------------ templates

    def _start_template(self, trun: TemplateRun, out: list[Instruction]) -> None:
        if not trun.ct.nodes:
            self._todo.append((trun, -1))
            return
        self._todo.extend((trun, idx) for idx in trun.ct.roots)

    def _node_ready(self, trun: TemplateRun, idx: int, out: list[Instruction]) -> None:
        if trun.failing:
            return
        node = trun.ct.nodes[idx]
        if node.step is None:  # a barrier between Steps groups
            self._node_done(trun, idx, {}, out)
            return
        path = f"{trun.path}/{node.name}" if trun.path else node.name
        if self.restored:
            done = self.restored.get(path)
            if done is not None:
                self.records.append(done)
                self.records.extend(self.restored_slices.get(path, ()))
                for rec in (done, *self.restored_slices.get(path, ())):
                    if rec.key is not None:
                        self.keys.setdefault(rec.key, rec.path)
                self._node_done(trun, idx, _outputs_of(done), out)
                return
        record = StepRecord(node.name, path, node.template_name)
        if self.earlier:
            before = self.earlier.get(path)
            if before is not None:  # its attempts so far, and their logs, stay counted
                record.workdirs.extend(before.workdirs)
                record.attempts = before.attempts
        self.records.append(record)
        sr = StepRun(trun, node, record)
        trun.runs[idx] = sr
        trun.n_active += 1
        try:
            if not self._prepare(sr, trun):
                self._skip(sr, out)
                return
        except Unavailable as exc:
            self._skip(sr, out, str(exc))
            return
        except Exception as exc:  # a broken expression or input: fail this step, clearly
            record.errors.append(f"{type(exc).__name__}: {exc}")
            sr.failed = True
            self._finish_step(sr, out)
            return
        reused = self.reuse.get(record.key) if self.reuse and record.key is not None else None
        if reused is not None:
            record.outputs.parameters = dict(reused.outputs.raw_parameters)
            record.outputs.artifacts = dict(reused.outputs.artifacts)
            record.phase = "Succeeded"
            record.start = record.end = time.time()
            self._emit("reused", record, {"from": reused.path})
            self._node_done(trun, idx, _outputs_of(record), out)
            return
        if node.sub is not None:
            self._start_children(sr, out)
        elif sr.n_units == 0:  # a fan-out over nothing: done, with empty stacked outputs
            record.phase = "Running"
            record.start = time.time()
            self._finish_step(sr, out)
        elif (
            sr.items is None
            and self.parallelism is None
            and trun.held is None
            and not self.restored_units
        ):
            # one attempt and no limit to wait for: launched now, as _pump would do next
            # (the ready queue is for steps that may have to wait, and costs a step its trip)
            sr.next_unit = 1
            sr.inflight = 1
            self._launch(self._make_unit(sr, 0, _ONE, 0), out)
        else:
            sr.queued = True
            self.ready.append(sr)

    def _prepare(self, sr: StepRun, trun: TemplateRun) -> bool:
        """Resolve the step's condition, inputs, key and fan-out. False: skip the step."""
        node = sr.node
        step = node.step
        assert step is not None
        if node.run_bindings:
            common = dict(node.const_inputs)
            results = trun.results
            for b in node.run_bindings:
                source = b.source
                if source is not None:  # another step's output: read straight from its result
                    result = results[source[0]]
                    # (a step that was skipped or failed, or no such output: evaluate() says)
                    if type(result) is dict:
                        value = result[source[1]].get(source[2], MISSING)
                        if value is not MISSING:
                            common[b.port] = value
                            continue
                common[b.port] = evaluate(b.value, trun)
        else:
            common = node.const_inputs  # never mutated: slices and workers copy
        sr.common = common
        # made by the first of these that computes with values: most steps have none of them
        scope: _Using | None = None
        when = step.when
        if when is not None:
            scope = _Using(sr, self.store)
            if not self._condition(when, scope, common):
                return False
        if node.fan_out:
            scope = scope or _Using(sr, self.store)
            self._fan_out(sr, scope)
        else:
            sr.slice_outputs = [None]
        key = step.key
        if key is not None:
            if sr.items is not None and node.key_per_item:
                self._slice_records(sr, key, scope or _Using(sr, self.store))
            else:
                if "{{" in key:
                    key = str(render(key, scope or _Using(sr, self.store)))
                self._claim_key(key, sr.record.path)
                sr.record.key = key
        return True

    def _claim_key(self, key: str, path: str) -> None:
        """Refuse a key that already names another execution of this run: queries,
        ``reuse_step=`` and per-slice records would take one for the other (a reused run
        gave every iteration of a loop the last iteration's outputs)."""
        first = self.keys.setdefault(key, path)
        if first != path:
            raise ValueError(
                f"key {key!r} already names step {first!r} of this run; keys name one "
                "execution each (for queries, resume and reuse): embed what tells the "
                "executions apart in the key, e.g. a loop's iteration"
            )

    def _slice_records(self, sr: StepRun, key: str, scope: _Using) -> None:
        """One record per slice, each with its own rendered key (Dflow's per-slice keys)."""
        assert sr.items is not None
        records = []
        for i, it in enumerate(sr.items):
            rec = StepRecord(
                name=f"{sr.record.name}[{i}]",
                path=f"{sr.record.path}[{i}]",
                template=sr.record.template,
                key=str(render(key, _ItemScope(scope, it))),
            )
            self._claim_key(rec.key, rec.path)  # type: ignore[arg-type]
            records.append(rec)
        self.records.extend(records)
        sr.slice_records = records

    def _condition(self, when: Any, scope: _Using, inputs: dict[str, Any]) -> bool:
        if isinstance(when, bool):
            return when
        if isinstance(when, Ref):
            value = when.evaluate(scope)
        elif isinstance(when, str):
            value = safe_condition(when, scope)
        elif callable(when):
            args = {k: scope.loaded_value(v, f"the input {k!r}") for k, v in inputs.items()}
            try:
                value = when(args)
            except Exception as exc:  # say it was the condition, not the OP, that raised
                name = getattr(when, "__qualname__", None) or type(when).__qualname__
                raise ConditionError(
                    f"the when= condition {name} raised {type(exc).__name__}: {exc}"
                ) from exc
        else:
            raise TypeError(f"when= must be an expression, a callable or a bool, got {when!r}")
        if isinstance(value, Ref):
            raise TypeError("when= evaluated to a reference, not a value")
        return bool(value)

    def _fan_out(self, sr: StepRun, scope: _Using) -> None:
        step = sr.node.step
        assert step is not None
        sl = step.slices
        sliced = sl.sliced_inputs if sl else ()
        for p in sliced:  # a BigParameter list is sliced here: each slice takes its element
            value = sr.common[p]
            if type(value) is BigValue:
                if sr.common is sr.node.const_inputs:  # shared by every run of the step
                    sr.common = dict(sr.common)
                sr.common[p] = scope.load(value, f"the input {p!r}")
        if step.with_param is not None:
            items = evaluate(step.with_param, scope)
            if isinstance(items, str):
                items = json.loads(items)
            items = list(items)
        else:
            lengths = {p: len(sr.common[p]) for p in sliced if sr.common[p] is not None}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"sliced inputs have different lengths: {lengths}")
            items = list(range(next(iter(lengths.values()), 0)))
        indices = list(range(len(items)))
        if sl is not None and sl.slices is not None:
            indices = [int(evaluate(sl.slices, _ItemScope(scope, it))) for it in items]
        inputs = sr.node.inputs
        for p in sliced:
            value = sr.common[p]
            if not isinstance(value, list | tuple):
                if value is None and _optional(inputs.get(p)):
                    continue  # an optional input left out: every slice gets None (as Dflow)
                raise TypeError(f"sliced input {p!r} must be a list, got {type(value).__name__}")
        sr.items = items
        sr.indices = indices
        sr.n_slices = len(items)
        sr.record.slices = len(items)
        sr.slice_outputs = [None] * len(items)
        size = sr.node.group_size
        sr.n_units = -(-len(items) // size)

    def _slice_inputs(self, sr: StepRun, i: int) -> dict[str, Any]:
        if sr.items is None:
            return sr.common
        node = sr.node
        values = dict(sr.common)
        scope = _ItemScope(sr.trun, sr.items[i])
        for b in node.item_bindings:
            values[b.port] = evaluate(b.value, scope)
        sl = node.step.slices if node.step else None
        if sl is not None:
            assert sr.indices is not None
            idx = sr.indices[i]
            for p in sl.sliced_inputs:
                given = sr.common[p]
                values[p] = None if given is None else given[idx]  # None: see _fan_out
        return values

    # ------------------------------------------------------------------ sub-templates

    def _start_children(self, sr: StepRun, out: list[Instruction]) -> None:
        sub = sr.node.sub
        assert sub is not None
        if sr.trun.depth >= MAX_NESTING:  # a loop that never ends would fill memory and disk
            sr.record.errors.append(
                f"sub-workflow {sub.name!r} would run {MAX_NESTING + 1} levels deep: a "
                "recursion whose when= never turns false? (dflow_async._state.MAX_NESTING "
                "is the limit)"
            )
            sr.failed = True
            self._finish_step(sr, out)
            return
        sr.record.phase = "Running"
        sr.record.start = time.time()
        self._emit("started", sr.record, {})
        n = sr.n_slices
        sr.n_units = n
        if n == 0:
            self._finish_step(sr, out)
            return
        pool = sr.node.pool_size  # Slices(pool_size=): sub-workflow slices running at once
        for _ in range(n if pool is None else min(pool, n)):
            self._start_child(sr, out)

    def _start_child(self, sr: StepRun, out: list[Instruction]) -> None:
        sub = sr.node.sub
        assert sub is not None
        i = sr.next_unit
        sr.next_unit += 1
        sr.inflight += 1
        inputs = {name: info.default for name, info in sub.inputs.items()}
        inputs.update(self._slice_inputs(sr, i))
        path = sr.record.path if sr.items is None else f"{sr.record.path}[{i}]"
        child = TemplateRun(sub, inputs, sr, path, i)
        if sr.children is _NO_CHILDREN:
            sr.children = []
        sr.children.append(child)
        self._start_template(child, out)

    def _template_done(self, trun: TemplateRun, out: list[Instruction]) -> None:
        values: dict[str, dict[str, Any]] = {"parameters": {}, "artifacts": {}}
        for name, (info, source) in trun.ct.outputs.items():
            if source is None:  # validation allowed it only with a default
                values[info.kind][name] = info.default
                continue
            try:
                values[info.kind][name] = evaluate(source, trun)
            except Unavailable:
                if info.default is not MISSING:
                    values[info.kind][name] = info.default
        parent = trun.parent
        if parent is None:
            self.outputs = values
            self.status = "Failed" if trun.failing else "Succeeded"
            out.append(Finish(self.status))
            return
        parent.inflight -= 1
        index = trun.unit_index
        if trun.failing:
            parent.record.failed_slices += 1
            if not parent.node.step or not parent.node.step.tolerates_failure:
                parent.failed = True
            error = f"sub-workflow {trun.path!r} failed"
            parent.record.errors.append(error)
            if parent.slice_records is not None:  # per-slice keys: each slice's own record
                self._slices_done(parent, range(index, index + 1), 0, [], "Failed", None, error)
        else:
            parent.done_units += 1
            done = {**values["parameters"], **values["artifacts"]}
            parent.slice_outputs[index] = done
            if parent.slice_records is not None:
                self._slices_done(parent, range(index, index + 1), 0, [], "Succeeded", [done])
        if parent.next_unit < parent.n_units and not parent.stopped:  # a pool slot is free
            self._start_child(parent, out)
        self._maybe_finish_step(parent, out)

    # ------------------------------------------------------------------ attempts

    def _pump(self, out: list[Instruction]) -> None:
        """Handle ready nodes, then start attempts while slots are free; repeat until calm."""
        limit = self.parallelism
        ready = self.ready
        todo = self._todo
        while True:
            while todo:  # ready nodes and completed templates, in order
                trun, idx = todo.popleft()
                if idx < 0:
                    self._template_done(trun, out)
                else:
                    self._node_ready(trun, idx, out)
            if self.retries:
                self._launch_retries(limit, out)
            while ready and (limit is None or self.running < limit):
                sr = ready[0]
                pool = sr.node.pool_size
                if (
                    sr.stopped
                    or sr.next_unit >= sr.n_units
                    or (pool is not None and sr.running >= pool)
                ):
                    ready.popleft()
                    sr.queued = False
                    if sr.stopped:
                        self._maybe_finish_step(sr, out)
                    continue
                trun = sr.trun
                if trun.held is not None and trun.running >= trun.limit:  # type: ignore[operator]
                    # its template's parallelism is used up: wait in that template's line
                    # (still counted as queued) until one of its attempts finishes
                    ready.popleft()
                    trun.held.append(sr)
                    continue
                number = sr.next_unit
                sr.next_unit += 1
                sr.inflight += 1
                if sr.next_unit >= sr.n_units:  # its last unit: off the queue right away
                    ready.popleft()
                    sr.queued = False
                if sr.items is None:
                    ids = _ONE
                else:
                    size = sr.node.group_size
                    ids = range(number * size, min(sr.n_slices, (number + 1) * size))
                if self.reuse and sr.slice_records is not None:
                    # reuse_step with per-slice keys: slices whose records are given do not run
                    reused = [self.reuse.get(sr.slice_records[i].key or "") for i in ids]
                    if all(r is not None for r in reused):
                        if sr.record.phase == "Pending":
                            sr.record.phase = "Running"
                            sr.record.start = time.time()
                        outs = [
                            {**r.outputs.raw_parameters, **r.outputs.artifacts}
                            for r in reused
                            if r is not None
                        ]
                        self._unit_ok(sr, number, ids, 0, [], outs, out)
                        continue
                finished = self.restored_units.get(sr.record.path) if self.restored_units else None
                if finished is not None and number in finished:
                    # an earlier driver of this run finished this unit: keep its outputs
                    if sr.record.phase == "Pending":
                        sr.record.phase = "Running"
                        sr.record.start = time.time()
                    self._unit_ok(sr, number, ids, 0, [], finished[number], out)
                    continue
                self._launch(self._make_unit(sr, number, ids, 0), out)
            if not todo:
                return

    def _launch_retries(self, limit: int | None, out: list[Instruction]) -> None:
        """Launch due retries while slots are free; a retry whose template's parallelism or
        step's pool_size is used up stays in line (an attempt of that template or step
        finishing calls this again)."""
        retries = self.retries
        waiting: list[Unit] = []
        while retries and (limit is None or self.running < limit):
            unit = retries.popleft()
            sr = unit.sr
            if sr.stopped:
                sr.inflight -= 1
                self._maybe_finish_step(sr, out)
                continue
            trun = sr.trun
            pool = sr.node.pool_size
            if (trun.held is not None and trun.running >= trun.limit) or (  # type: ignore[operator]
                pool is not None and sr.running >= pool
            ):
                # (while the retry waited out its delay, the pool slot it left went to the
                # step's next unit)
                waiting.append(unit)
                continue
            self._launch(unit, out)
        retries.extendleft(reversed(waiting))

    def _make_unit(self, sr: StepRun, number: int, ids: range, attempt: int) -> Unit:
        node = sr.node
        record = sr.record
        where = record.path
        if len(where) > _DEEPEST_DIR:
            where = _shortened(where)
        # positional: keyword calls cost a good part of these objects' construction
        if sr.items is None:
            if attempt == 0:
                workdir = self._steps_dir + where + self._first_attempt
            else:
                workdir = f"{self._steps_dir}{where}/a{attempt}{self.attempt_suffix}"
            pieces: tuple[SliceInput, ...] = (SliceInput(None, sr.common, workdir),)
        else:
            base = self._steps_dir + where
            name = f"a{attempt}{self.attempt_suffix}"
            pieces = tuple(
                SliceInput(i, self._slice_inputs(sr, i), f"{base}/s{i}/{name}") for i in ids
            )
        step = node.step
        assert step is not None
        spec = AttemptSpec(
            f"{record.path}#{number}@{attempt}",  # attempt_id
            self.run_id,
            record.path,  # step
            record.key,
            attempt,
            node.op,
            pieces,
            step.timeout,
            step.resources,
            self.run_dir,
            self.store,
        )
        return Unit(sr, number, ids, attempt, spec)

    def _launch(self, unit: Unit, out: list[Instruction]) -> None:
        sr = unit.sr
        record = sr.record
        self.running += 1
        sr.running += 1
        sr.trun.running += 1
        if record.phase == "Pending":
            record.phase = "Running"
            record.start = time.time()
            if self.on_event is not None:
                self._emit("started", record, {"attempt": unit.attempt})
        elif unit.attempt and self.on_event is not None:  # a retry starts: its own event
            self._emit("started", record, {"attempt": unit.attempt})
        out.append(unit)

    def _slices_done(
        self,
        sr: StepRun,
        ids: range,
        attempt: int,
        workdirs: list[str],
        phase: Any,
        outputs: Sequence[dict[str, Any]] | None,
        error: str | None = None,
    ) -> None:
        assert sr.slice_records is not None
        now = time.time()
        for offset, i in enumerate(ids):
            rec = sr.slice_records[i]
            rec.phase = phase
            rec.attempts = attempt + 1
            rec.start = rec.start or sr.record.start
            rec.end = now
            if offset < len(workdirs):
                rec.workdirs.append(workdirs[offset])
            if outputs is not None:
                for name, value in outputs[offset].items():
                    info = sr.node.outputs.get(name)
                    kind = info.kind if info else "parameters"
                    getattr(rec.outputs, kind)[name] = value
            if error:
                rec.errors.append(error)
            self._emit("slice_succeeded" if phase == "Succeeded" else "slice_failed", rec, {})

    def _unit_failed(self, unit: Unit, outcome: Failed, out: list[Instruction]) -> None:
        sr = unit.sr
        node = sr.node
        record = sr.record
        where = "" if unit.spec.slices[0].index is None else f" (slices {unit.slice_ids.start}..)"
        record.errors.append(f"attempt {unit.attempt}{where}: [{outcome.kind}] {outcome.error}")
        if sr.slice_records is None:  # where its log is, for `dflow-async logs`
            record.workdirs.extend(p.workdir for p in unit.spec.slices)
        retry = node.retry
        if not sr.stopped and retry is not None and retry.should_retry(outcome.kind, unit.attempt):
            delay = retry.delay(unit.attempt)
            nxt = self._make_unit(sr, unit.number, unit.slice_ids, unit.attempt + 1)
            self._emit(
                "retrying",
                record,
                {
                    "attempt": unit.attempt,
                    "error": outcome.error,
                    "kind": outcome.kind,
                    "delay": delay,
                },
            )
            if delay > 0:
                out.append(Retry(nxt, delay))
            else:
                self.retries.append(nxt)
            return
        sr.inflight -= 1
        record.failed_slices += len(unit.slice_ids)
        if sr.slice_records is not None:
            workdirs = [p.workdir for p in unit.spec.slices]
            self._slices_done(
                sr, unit.slice_ids, unit.attempt, workdirs, "Failed", None, outcome.error
            )
        step = node.step
        if step is None or not step.tolerates_failure:
            sr.failed = True
        self._maybe_finish_step(sr, out)

    # ------------------------------------------------------------------ completion

    def _maybe_finish_step(self, sr: StepRun, out: list[Instruction]) -> None:
        if sr.inflight or sr.finished:
            return
        failed = _failed_units(sr) if sr.record.failed_slices else 0
        if sr.done_units + failed >= sr.n_units or sr.failed or sr.trun.failing:
            self._finish_step(sr, out)

    def _finish_step(self, sr: StepRun, out: list[Instruction]) -> None:
        node = sr.node
        step = node.step
        assert step is not None
        record = sr.record
        record.end = time.time()
        trun = sr.trun
        failed_units = _failed_units(sr) if record.failed_slices else 0
        complete = sr.done_units + failed_units >= sr.n_units
        clean = not sr.failed and complete and not failed_units
        if not clean:
            ok_slices = sr.n_slices - record.failed_slices
            tolerated = (
                not sr.failed
                and sr.items is not None  # a fan-out may succeed with holes; one step cannot
                and complete
                and self._enough_success(step, ok_slices, sr.n_slices)
            )
            if not tolerated:
                record.phase = "Failed" if sr.failed or record.failed_slices else "Cancelled"
                if record.phase == "Cancelled" and record.start is None:
                    record.phase = "Pending"  # never started: left as it was
                kind = "failed" if record.phase == "Failed" else "cancelled"
                self._emit(kind, record, {"error": record.error})
                if record.phase == "Failed" and step.continue_on_failed and not trun.failing:
                    self._node_done(trun, node.index, FAILED, out)
                    return
                self._end_run(sr)
                trun.results[node.index] = FAILED
                if not trun.failing and record.phase == "Failed":
                    self._fail_template(trun, out)
                self._check_failing_done(trun, out)
                return
        if sr.items is None and not node.has_artifact_outputs:  # most steps: no call
            # the worker's own dict of parameters: nothing else holds it
            outputs = {"parameters": sr.slice_outputs[0] or {}, "artifacts": {}}
        else:
            outputs = self._collect_outputs(sr)
        values = record.outputs
        values.parameters = outputs["parameters"]
        values.artifacts = outputs["artifacts"]
        record.phase = "Succeeded"
        if self.on_event is not None:
            self._emit("succeeded", record, {})
        self._node_done(trun, node.index, outputs, out)

    def _enough_success(self, step: Any, ok: int, total: int) -> bool:
        if step.continue_on_num_success is not None and ok >= step.continue_on_num_success:
            return True
        if step.continue_on_success_ratio is not None and total:
            return bool(ok / total >= step.continue_on_success_ratio)
        return bool(step.continue_on_failed)

    def _collect_outputs(self, sr: StepRun) -> dict[str, dict[str, Any]]:
        """A fan-out's outputs stacked in slice order, or one attempt's sorted by kind
        (_finish_step takes those of a step without artifact outputs as they are)."""
        node = sr.node
        result: dict[str, dict[str, Any]] = {"parameters": {}, "artifacts": {}}
        if sr.items is None:
            for name, value in (sr.slice_outputs[0] or {}).items():
                info = node.outputs.get(name)
                result[info.kind if info else "parameters"][name] = value
            return result
        for name, info in node.outputs.items():
            result[info.kind][name] = [None if v is None else v.get(name) for v in sr.slice_outputs]
        sr.slice_outputs = []  # the stacked lists now hold the values
        return result

    def _skip(self, sr: StepRun, out: list[Instruction], reason: str | None = None) -> None:
        sr.record.phase = "Skipped"
        sr.record.end = time.time()
        self._emit("skipped", sr.record, {"reason": reason} if reason else {})
        self._node_done(sr.trun, sr.node.index, SKIPPED, out)

    def _end_run(self, sr: StepRun) -> None:
        if not sr.finished:
            sr.finished = True
            sr.trun.n_active -= 1

    def _node_done(self, trun: TemplateRun, idx: int, result: Any, out: list[Instruction]) -> None:
        trun.results[idx] = result
        trun.pending -= 1
        sr = trun.runs[idx]
        if sr is not None:
            self._end_run(sr)
            trun.runs[idx] = None  # finished runs are reachable through their records only
        if trun.failing:
            self._check_failing_done(trun, out)
            return
        remaining = trun.remaining
        for s in trun.ct.nodes[idx].succs:
            remaining[s] -= 1
            if remaining[s] == 0:
                self._todo.append((trun, s))
        if trun.pending == 0:
            trun.pending = -1  # report once
            self._todo.append((trun, -1))

    def _fail_template(self, trun: TemplateRun, out: list[Instruction]) -> None:
        """Launch nothing more in this template run (and its sub-runs); let running attempts
        finish so their outputs are kept, then report the failure upwards."""
        trun.failing = True
        for sr in list(trun.runs):
            if sr is None or sr.finished:
                continue
            for child in sr.children:
                if not child.failing:
                    self._fail_template(child, out)
            self._maybe_finish_step(sr, out)

    def _check_failing_done(self, trun: TemplateRun, out: list[Instruction]) -> None:
        if trun.failing and trun.n_active == 0 and trun.pending >= 0:
            trun.pending = -1  # report once
            self._todo.append((trun, -1))

    def _emit(self, kind: str, record: StepRecord, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            # the facts of the event itself: hooks may run later (on the event loop, in
            # order), when the live record has moved on
            fields.setdefault("attempt", max(record.attempts - 1, 0))
            fields["phase"] = record.phase
            self.on_event(kind, record, fields)


#: how deep sub-workflows may nest (a recursion loop nests a level per iteration)
MAX_NESTING = 10_000

#: the longest step path (in characters) kept as nested directories under <run>/steps/
_DEEPEST_DIR = 768


def _shortened(path: str) -> str:
    """The directory, under <run>/steps/, of a step whose path nests deeper than file systems
    allow (a recursion loop adds a level per iteration; PATH_MAX is 4096 bytes): its outer
    levels, a digest of the whole path, and its own name."""
    head = path[: _DEEPEST_DIR // 2].rpartition("/")[0]
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return f"{head}/~{digest}/{path.rpartition('/')[2]}"


def _outputs_of(record: StepRecord) -> dict[str, dict[str, Any]]:
    return {"parameters": record.outputs.raw_parameters, "artifacts": record.outputs.artifacts}


class ConditionError(Exception):
    """A step's ``when=`` callable raised: the step fails, naming the condition."""


def _optional(info: Any) -> bool:
    """Whether a port may be left out: an optional artifact, or a parameter defaulting to
    None."""
    return info is not None and info.default is None


def _failed_units(sr: StepRun) -> int:
    size = sr.node.group_size
    return -(-sr.record.failed_slices // size) if sr.record.failed_slices else 0
