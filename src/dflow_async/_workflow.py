"""Workflow: a named entry template plus run settings; ``run()`` validates, then executes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio

from dflow_async._cache import StepCache, changed_ops, ops_code
from dflow_async._capture import std_streams_routed
from dflow_async._codec import decode, encode, fingerprint, type_label, unrecordable
from dflow_async._compile import CompiledTemplate, compile_template, definition_digest
from dflow_async._events import EventHook, check_hook, logging_hook, safe
from dflow_async._gc import tuned_gc
from dflow_async._graph import DAG, Step, Steps, Template
from dflow_async._journal import Journal, JournalError, read_meta
from dflow_async._op import OP
from dflow_async._recorder import Recorder
from dflow_async._records import PHASES, StepRecord, did_you_mean, name_outputs
from dflow_async._state import RunState
from dflow_async._store import ArtifactStore, check_url
from dflow_async._store_local import ensure_dir
from dflow_async._stored import adopt_inputs, edited_inputs, forget_lost, local_inputs_stamp
from dflow_async.exceptions import (
    ArtifactError,
    EditedInputWarning,
    EditedOpWarning,
    ExecutorNotFoundError,
    WorkflowFailedError,
    WorkflowValidationError,
)
from dflow_async.executors._base import Executor
from dflow_async.executors._registry import make_executor

__all__ = ["Result", "Workflow", "check_run_id", "check_workflow_name", "default_store"]

# A run id names the run's directory (<store>/runs/<run id>): one path component, which no
# shell, table or file system reads as anything else. Dflow's (Kubernetes') names fit.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SAFE_RULE = "ASCII letters, digits, '-', '_' and '.', starting with a letter, a digit or '_'"
_MAX_RUN_ID = 255  # a file name, on every common file system
_ID_SUFFIX = 7  # "-" and 6 hex digits: a default run id is "<workflow name>-1a2b3c"


def default_store() -> Path:
    """Where runs are kept unless ``store=`` says otherwise: ``./.dflow-async``."""
    return Path(os.environ.get("DFLOW_ASYNC_HOME", ".dflow-async"))


class Workflow:
    """A workflow: its entry Steps or DAG, and how to run it.

    ``Workflow("name")`` starts with an empty Steps that ``add`` fills; pass ``steps=`` or
    ``dag=`` to use a template built elsewhere.
    """

    def __init__(
        self,
        name: str,
        steps: Steps | None = None,
        dag: DAG | None = None,
        *,
        parallelism: int | None = None,
        executor: str | Executor = "inline",
        store: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        verify_artifacts: bool = False,
    ) -> None:
        if steps is not None and dag is not None:
            raise ValueError(f"Workflow {name!r}: pass steps= or dag=, not both")
        check_workflow_name(name)
        self.name = name
        self.entrypoint: Template = steps or dag or Steps(name)
        if parallelism is not None and parallelism < 1:
            raise ValueError(f"Workflow {name!r}: parallelism must be >= 1, got {parallelism}")
        self.parallelism = parallelism
        self.executor = executor
        self.store = store
        self.storage_options = dict(storage_options or {})
        #: re-hash every input artifact a step fetches, even local hard links that pass the
        #: store's cheap check (read-only, right size): for stores others can write to
        self.verify_artifacts = verify_artifacts
        #: "FILE.py:OBJECT" the workflow came from; recorded so `dflow-async resume` finds it
        self.source: str | None = None
        # the command-line option that gives the run its parameters (`dflow-async run` sets
        # "--param"), which messages name instead of run(parameters=...)
        self._parameters_option: str | None = None

    def add(self, step: Step | Sequence[Step]) -> Workflow:
        self.entrypoint.add(step)  # type: ignore[attr-defined]
        return self

    # ---------------------------------------------------------------- checks

    def validate(
        self, *, executor: str | Executor | None = None, parameters: dict[str, Any] | None = None
    ) -> CompiledTemplate:
        """Compile and check everything; raises WorkflowValidationError listing every problem.
        Writes nothing, and creates no directory (a run also checks that its store can be
        written, and takes uploads from other stores into it)."""
        return self._prepare(executor, parameters, adopt=False)[0]

    def _prepare(
        self,
        executor: str | Executor | None,
        parameters: dict[str, Any] | None,
        *,
        adopt: bool = True,
    ) -> tuple[CompiledTemplate, dict[Any, Executor]]:
        default = executor if executor is not None else self.executor
        executors: dict[Any, Executor] = {}
        broken: dict[Any, str] = {}

        def check_executor(spec: Any, op: OP) -> str | None:
            if spec in broken:
                return None  # said once, for the first step that uses it
            found = executors.get(spec)
            if found is None:
                try:
                    found = make_executor(spec)
                except (ExecutorNotFoundError, TypeError) as exc:
                    broken[spec] = str(exc)
                    return broken[spec]
                if not isinstance(getattr(found, "name", None), str):
                    # every message about the executor, and a resume, names it by this
                    cls = type(found)
                    broken[spec] = (
                        f"executor {cls.__module__}.{cls.__qualname__} sets no name: give the "
                        "class a `name = ...` (its entry-point name, which users pass as "
                        "executor=)"
                    )
                    return broken[spec]
                # found here, not when the run enters it: by then the run has a journal,
                # left behind as an Interrupted run that never started
                refusal = found._unusable_from(_running_loop())
                if refusal is not None:
                    broken[spec] = refusal
                    return broken[spec]
                executors[spec] = found
            try:
                return found.check_op(op)
            except Exception as exc:  # a plugin's bug: reported with the step, not raised
                return (
                    f"the {found.name!r} executor failed checking the OP "
                    f"({type(exc).__name__}: {exc})"
                )

        provided = frozenset(parameters or {})
        compiled, problems = compile_template(
            self.entrypoint,
            default_executor=default,
            check_executor=check_executor,
            provided=provided,
            parameters_option=self._parameters_option,
        )
        try:
            store = self.artifact_store()
            if adopt:  # a run: it fails here, before any step, on a store it cannot write;
                store.check()  # validation alone writes nothing, not even the store's dirs
        except ArtifactError as exc:
            problems.append(f"store: {exc}")
        else:
            if adopt and not problems:  # uploads to another store: for a run that can start
                problems += adopt_inputs(compiled, store)
            remote = sorted(e.name for e in executors.values() if not e.in_process)
            if store.url.startswith("memory:") and remote:
                problems.append(
                    f"store {store.url!r} lives in this process's memory, but executors "
                    f"{remote} run steps in other processes; use a local path or shared storage"
                )
        option = self._parameters_option
        for name in sorted(provided - set(compiled.inputs)):
            given = f"{option} {name}=..." if option else "run(parameters=...)"
            problems.append(
                f"{given} gives {name!r}, which {self.entrypoint.name!r} does not "
                f"declare (inputs: {sorted(compiled.inputs) or 'none'})"
            )
        if problems:
            raise WorkflowValidationError(self.name, problems)
        return compiled, executors

    # ---------------------------------------------------------------- running

    def run(
        self,
        *,
        parameters: dict[str, Any] | None = None,
        executor: str | Executor | None = None,
        parallelism: int | None = None,
        run_id: str | None = None,
        on_event: EventHook | Iterable[EventHook] | None = None,
        resume: str | None = None,
        reuse_step: Sequence[StepRecord] | None = None,
        journal: bool = True,
    ) -> Result:
        """Run to completion and return the result (blocks; use ``arun`` inside a loop).

        ``resume=RUN_ID`` continues a run that was interrupted: its succeeded steps keep their
        outputs and are not executed again. ``reuse_step=[records]`` takes succeeded step
        records (matched by key) from earlier runs instead of executing those steps.
        ``journal=False`` keeps no journal (no resume, no inspection from other processes).
        """
        _refuse_running_loop()
        _refuse_in_worker_bootstrap()
        # named here, so that a Ctrl-C can say which run to resume
        run_id = _run_id(self.name, run_id, resume)
        interrupts: list[int] | None = [] if _default_ctrl_c() else None

        async def main() -> Result:
            with tuned_gc(), std_streams_routed(), _ctrl_c(interrupts):
                return await self._arun(
                    parameters, executor, parallelism, run_id, on_event, resume, reuse_step, journal
                )

        try:
            try:
                return anyio.run(main)
            except asyncio.CancelledError:
                if not interrupts:  # not cancelled by a Ctrl-C of ours
                    raise
                raise KeyboardInterrupt from None
        except KeyboardInterrupt:
            # asyncio's own traceback (CancelledError inside a KeyboardInterrupt) says nothing
            # a user can act on
            after = (
                f"wf.run(resume={run_id!r}) goes on with the rest"
                if journal
                else "it kept no journal (journal=False), so it cannot be resumed"
            )
            raise KeyboardInterrupt(
                f"run {run_id} was cancelled; its finished steps are kept: {after}"
            ) from None

    async def arun(
        self,
        *,
        parameters: dict[str, Any] | None = None,
        executor: str | Executor | None = None,
        parallelism: int | None = None,
        run_id: str | None = None,
        on_event: EventHook | Iterable[EventHook] | None = None,
        resume: str | None = None,
        reuse_step: Sequence[StepRecord] | None = None,
        journal: bool = True,
    ) -> Result:
        """Run inside the current event loop (Jupyter, an async application)."""
        _refuse_in_worker_bootstrap()
        _require_asyncio()
        with tuned_gc(), std_streams_routed():
            return await self._arun(
                parameters, executor, parallelism, run_id, on_event, resume, reuse_step, journal
            )

    async def _arun(
        self,
        parameters: dict[str, Any] | None,
        executor: str | Executor | None,
        parallelism: int | None,
        run_id: str | None,
        on_event: EventHook | Iterable[EventHook] | None,
        resume: str | None,
        reuse_step: Sequence[StepRecord] | None,
        journal: bool,
    ) -> Result:
        run_id = _run_id(self.name, run_id, resume)
        run_dir = (self.store_path() / "runs" / run_id).absolute()
        limit = parallelism if parallelism is not None else self.parallelism
        if resume is not None and journal:
            # a resumed run goes on with what it was started with, unless told otherwise
            recorded = read_meta(run_dir)
            parameters = _resumed_parameters(run_id, recorded, parameters, run_dir / "values")
            if executor is None:
                executor = _resumed_executor(run_id, recorded, self.executor)
            if parallelism is None and "parallelism" in recorded:
                limit = int(recorded["parallelism"]) if recorded["parallelism"] else None
        compiled, executors = self._prepare(executor, parameters)
        if journal and resume is None:
            _refuse_unrecordable(self.name, parameters)
        elif journal:  # before the run is taken over: a warning raised as an error leaves it be
            _warn_edited_ops(run_id, recorded.get("op_code"), compiled)
            _warn_edited_inputs(run_id, recorded.get("local_inputs"))
        reuse = _reuse_records(reuse_step)
        hook = _fan(_hooks(on_event, run_id))
        recorder: Recorder | None = None
        restored: list[StepRecord] = []
        units: dict[str, dict[int, list[Any]]] = {}
        suffix = ""
        if journal:
            digest = definition_digest(compiled)
            if resume is not None:

                def same_definition(snapshot: Any) -> None:
                    recorded = snapshot.meta.get("definition_digest")
                    if recorded != digest:
                        raise JournalError(
                            f"run {run_id} was started from a different workflow definition "
                            f"({recorded} != {digest}); resume needs the same workflow. To "
                            "build on its results, start a new run with reuse_step="
                        )

                jr, snapshot = Journal.resume(run_dir, check=same_definition)
                restored, units = snapshot.records, snapshot.units
                try:
                    _forget_lost(run_id, restored, units, self.artifact_store())
                except BaseException:
                    jr.close()
                    raise
                suffix = f".r{jr.epoch - 1}"
            else:
                default = executor if executor is not None else self.executor
                meta = self._meta(run_id, digest, parameters, run_dir)
                meta.update(
                    # what the run was started on, which a resume goes on with
                    executor=default.name if isinstance(default, Executor) else str(default),
                    executor_given="object" if isinstance(default, Executor) else "name",
                    parallelism="" if limit is None else str(limit),
                    op_code=json.dumps(ops_code(compiled)),
                    local_inputs=json.dumps(local_inputs_stamp(compiled)),
                )
                jr = Journal.create(run_dir, meta=meta)
            try:
                recorder = Recorder(jr, hook)
            except BaseException:
                jr.close()
                raise
        elif resume is not None:
            raise ValueError("resume= needs the run's journal; do not pass journal=False")
        else:
            ensure_dir(run_dir)
        status = "Running"
        state: RunState | None = None
        try:  # from here on, whatever happens, the run's journal (and its lock) is let go
            state = RunState(
                compiled,
                run_id=run_id,
                run_dir=str(run_dir),
                inputs=parameters,
                parallelism=limit,
                on_event=recorder.on_event if recorder is not None else hook,
                on_unit=recorder.on_unit if recorder is not None else None,
                restored=restored,
                restored_units=units,
                reuse=reuse,
                attempt_suffix=suffix,
                store=self.artifact_store(),
            )
            state.unit_events = hook is not None
            from dflow_async._scheduler import execute

            cache = StepCache(self.store_path().absolute() / "cache", state.store)
            status = await execute(state, executors, recorder, cache)
        finally:
            if status == "Running" and state is not None:
                state.status = "Cancelled"
            if recorder is not None:
                recorder.journal.close()
        return Result(
            name=self.name,
            run_id=run_id,
            run_dir=run_dir,
            status=state.status,
            records=state.records,
            outputs=state.outputs,
        )

    def store_path(self) -> Path:
        """The local directory holding run directories (journals, work dirs, logs): the
        store itself when it is local, else ``$DFLOW_ASYNC_HOME`` (``./.dflow-async``)."""
        return runs_home(self.store)

    def artifact_store(self) -> ArtifactStore:
        """Where artifacts are committed: ``<store>/artifacts`` for a local store, the URL
        itself (``s3://bucket/prefix``, ``memory://...``) otherwise."""
        if self.store is not None:  # before a mistyped URL is taken for a local directory
            check_url(os.fspath(self.store))
        if self.store is None or _is_local_url(str(self.store)):
            root = self.store_path().absolute() / "artifacts"
            return ArtifactStore(str(root), self.storage_options, verify=self.verify_artifacts)
        return ArtifactStore(str(self.store), self.storage_options, verify=self.verify_artifacts)

    def _meta(
        self, run_id: str, digest: str, parameters: dict[str, Any] | None, run_dir: Path
    ) -> dict[str, str]:
        import time

        source = self.source
        if source is None:
            main = getattr(sys.modules.get("__main__"), "__file__", None)
            source = str(Path(main).absolute()) if main else ""
        return {
            "run_id": run_id,
            "workflow": self.name,
            "definition_digest": digest,
            "created": repr(time.time()),
            "status": "Running",
            "source": source,
            "cwd": os.getcwd(),
            # the URL only: storage options may hold credentials, which a journal must not
            "store": self.artifact_store().url,
            # as the journal keeps outputs (values JSON cannot hold as blobs beside it): a
            # resume goes on with these
            "run_parameters": encode(parameters or {}, run_dir / "values"),
        }


def runs_home(store: str | os.PathLike[str] | None) -> Path:
    """The local directory holding the run directories of runs on ``store``: the store itself
    when it is local, else ``$DFLOW_ASYNC_HOME`` (``./.dflow-async``), where runs on a remote
    store (``s3://...``) keep their journals and work dirs."""
    if store is None or not _is_local_url(os.fspath(store)):
        return default_store()
    return local_store_path(store)


def local_store_path(url: str | os.PathLike[str]) -> Path:
    """The directory a local store names: a path, ``file:///dir``, ``file:/dir``, ``local://``
    (fsspec's own parsing; relative paths are taken from the current directory)."""
    from fsspec.implementations.local import LocalFileSystem

    return Path(LocalFileSystem._strip_protocol(os.fspath(url)))


def _is_local_url(url: str) -> bool:
    import fsspec.core

    protocol = fsspec.core.split_protocol(url)[0]
    return protocol in (None, "file", "local")


def _hooks(on_event: EventHook | Iterable[EventHook] | None, run_id: str) -> list[EventHook]:
    hooks: list[EventHook] = []
    given = [on_event] if callable(on_event) else list(on_event or ())
    for hook in given:
        check_hook(hook)
        hooks.append(safe(hook))
    log = logging_hook(run_id)
    if log is not None:
        hooks.append(safe(log))
    return hooks


def _fan(hooks: list[EventHook]) -> EventHook | None:
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def fan(kind: str, record: StepRecord, fields: dict[str, Any]) -> None:
        for h in hooks:
            h(kind, record, fields)

    return fan


class Result:
    """The outcome of a run: ``status``, ``run_id``, ``query_step(...)``, ``outputs``."""

    def __init__(
        self,
        *,
        name: str,
        run_id: str,
        run_dir: Path,
        status: str,
        records: list[StepRecord],
        outputs: dict[str, dict[str, Any]],
    ) -> None:
        self.name = name
        self.run_id = run_id
        self.run_dir = run_dir
        self.status = status
        self._records = records
        self._named = False
        self.outputs = outputs

    @property
    def records(self) -> list[StepRecord]:
        """Every step's record, in start order."""
        if not self._named:  # named when taken: most results are only queried
            name_outputs(self._records)
            self._named = True
        return self._records

    @property
    def succeeded(self) -> bool:
        return self.status == "Succeeded"

    def query_step(
        self,
        name: str | Sequence[str] | None = None,
        key: str | Sequence[str] | None = None,
        phase: str | Sequence[str] | None = None,
        *,
        predicate: Callable[[StepRecord], bool] | None = None,
    ) -> list[StepRecord]:
        """Step records matching every given filter, in start order.

        ``name`` matches a step's name or its full path (``"loop/next/plus1"``); ``phase`` is
        one of Pending, Running, Succeeded, Failed, Skipped, Cancelled (another is refused).
        """
        return select_records(self._records, name=name, key=key, phase=phase, predicate=predicate)

    def raise_for_status(self) -> Result:
        if self.status != "Succeeded":
            failed = [r for r in self._records if r.phase == "Failed"]
            detail = "; ".join(f"{r.path}: {r.error}" for r in failed[:5])
            raise WorkflowFailedError(
                f"workflow {self.name!r} (run {self.run_id}) {self.status.lower()}"
                + (f": {detail}" if detail else "")
            )
        return self

    def __repr__(self) -> str:
        return f"<Result {self.run_id} {self.status}: {len(self._records)} steps>"


def select_records(
    records: Sequence[StepRecord],
    *,
    name: str | Sequence[str] | None = None,
    key: str | Sequence[str] | None = None,
    phase: str | Sequence[str] | None = None,
    predicate: Callable[[StepRecord], bool] | None = None,
) -> list[StepRecord]:
    names = _as_set(name, "name")
    keys = _as_set(key, "key")
    phases = _as_set(phase, "phase")
    if phases is not None and not phases.issubset(PHASES):
        _refuse_phase(phases)
    found = []
    for rec in records:
        if names is not None and rec.name not in names and rec.path not in names:
            continue
        if keys is not None and rec.key not in keys:
            continue
        if phases is not None and rec.phase not in phases:
            continue
        found.append(rec)
    name_outputs(found)  # before the predicate, which may read outputs
    if predicate is not None:
        return [rec for rec in found if predicate(rec)]
    return found


def _as_set(value: str | Sequence[str] | None, label: str) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {value}
    # a Step (or a list of them) for name= would match nothing, silently
    values = set(value) if isinstance(value, Iterable) else None
    if values is None or not all(isinstance(v, str) for v in values):
        wrong = value if values is None else next(v for v in values if not isinstance(v, str))
        hint = f" (pass its name, {wrong.name!r})" if isinstance(wrong, Step) else ""
        raise TypeError(
            f"query_step({label}=...) takes a string or a list of strings, got "
            f"{type(wrong).__name__} {wrong!r:.60}{hint}"
        )
    return values


def _refuse_phase(phases: set[str]) -> None:
    """A misspelt phase (``"Succeded"``) would match no step, silently."""
    wrong = sorted(phases.difference(PHASES))[0]
    hint = did_you_mean(wrong, PHASES)
    raise ValueError(
        f"query_step(phase=...): unknown phase {wrong!r}{hint} (the phases are: "
        f"{', '.join(PHASES)})"
    )


def _resumed_parameters(
    run_id: str, meta: dict[str, str], given: dict[str, Any] | None, blob_dir: Path
) -> dict[str, Any] | None:
    """The parameters run ``run_id`` was started with, which its resume goes on with: one
    run never mixes two sets. Parameters given to the resume must be the same ones."""
    text = meta.get("run_parameters")
    if text is None:  # a journal from before runs recorded their parameters for resume
        return given
    recorded: dict[str, Any] = decode(text, blob_dir)
    if given is None:
        return recorded
    differ = [
        name
        for name in sorted(set(given) | set(recorded), key=str)
        if name not in given or name not in recorded or not _same(given[name], recorded[name])
    ]
    if not differ:
        return recorded
    missing = object()

    def show(values: dict[str, Any], name: str) -> str:
        value = values.get(name, missing)
        return "(not given)" if value is missing else _short(value)

    detail = "; ".join(
        f"{name!r}: started with {show(recorded, name)}, given {show(given, name)}"
        for name in differ
    )
    raise JournalError(
        f"run {run_id} was started with other parameters ({detail}); a resumed run goes on "
        "with the parameters it was started with, so leave parameters= out (or pass the same "
        "ones). To run with new parameters, start a new run (reuse_step= can take this run's "
        "results)"
    )


def _resumed_executor(run_id: str, meta: dict[str, str], own: str | Executor) -> str | None:
    """The default executor run ``run_id`` was started on, for a resume that names none
    (None: the workflow's own, as a journal from before runs recorded it)."""
    name = meta.get("executor")
    if name is None or meta.get("executor_given") != "object":
        return name
    if isinstance(own, Executor) and own.name == name:
        return None  # the workflow's own executor object, which its code built again
    raise JournalError(
        f"run {run_id} was started on an executor object ({name!r}, given to "
        "run(executor=...)), which a resume cannot build again with its settings: pass the "
        f"executor to the resume, wf.run(resume={run_id!r}, executor=...), or name one "
        f"(`dflow-async resume {run_id} --executor {name}` builds {name!r} with its default "
        "settings)"
    )


def _same(given: Any, recorded: Any) -> bool:
    """Equal, or recorded alike (arrays, whose == is element-wise; BigParameter values, by
    their reference)."""
    try:
        if (given == recorded) is True:
            return True
    except Exception:  # an array's truth value, a comparison that raises
        pass
    try:
        return fingerprint(given) == fingerprint(recorded)
    except Exception:  # cannot be pickled: not what the run recorded
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse_unrecordable(workflow: str, parameters: dict[str, Any] | None) -> None:
    """The journal keeps the run's parameters for a resume: refuse, before the run starts,
    a value it cannot hold (as it refuses such an output)."""
    problems = []
    for name, value in (parameters or {}).items():
        exc = unrecordable(value)
        if exc is not None:
            problems.append(
                f"run(parameters=...) gives {name!r} a {type_label(value)} value, which the "
                f"run's journal cannot keep for a resume ({type(exc).__name__}: {exc}); pass "
                "a picklable value, or run with journal=False (a run that cannot be resumed)"
            )
    if problems:
        raise WorkflowValidationError(workflow, problems)


def check_workflow_name(name: Any) -> None:
    """A workflow's name starts its default run ids, which name run directories: refuse one
    that cannot (``"../x"``, ``"a/b"``, a newline) instead of writing outside the store."""
    if not isinstance(name, str):
        raise TypeError(f"a workflow's name is a string, got {type(name).__name__} {name!r}")
    longest = _MAX_RUN_ID - _ID_SUFFIX
    if not _SAFE_NAME.fullmatch(name) or len(name) > longest:
        raise ValueError(
            f"workflow name {name!r} cannot start a run id ({name + '-1a2b3c'!r} by "
            "default; a run id names the run's directory, one path component): use 1 to "
            f"{longest} {_SAFE_RULE}"
        )


def check_run_id(run_id: Any, what: str = "run_id") -> None:
    """A run id names the run's directory: one safe path component."""
    if not isinstance(run_id, str):
        raise TypeError(f"{what}= takes a run id, a string; got {type(run_id).__name__}")
    if not _SAFE_NAME.fullmatch(run_id) or len(run_id) > _MAX_RUN_ID:
        raise ValueError(
            f"{what}={run_id!r} is not a run id: a run id names the run's directory, one path "
            f"component, so it is 1 to {_MAX_RUN_ID} {_SAFE_RULE}"
        )


def _run_id(name: str, run_id: str | None, resume: str | None) -> str:
    if resume is not None and run_id is not None and run_id != resume:
        raise ValueError("pass run_id= or resume=, not both")
    if resume is not None:
        check_run_id(resume, "resume")
        return resume
    if run_id is not None:
        check_run_id(run_id)
        return run_id
    check_workflow_name(name)  # it may have been changed since the Workflow was made
    return f"{name}-{secrets.token_hex(3)}"


def _refuse_in_worker_bootstrap() -> None:
    """A new process of the process executor (multiprocessing's spawn and forkserver start
    methods) imports the main script before it starts working. A script that runs its workflow
    outside ``if __name__ == "__main__":`` would run it again there, in every worker, side
    effects and all: that worker ends instead, saying why, and the driver fails the steps it
    would have run with the same explanation."""
    mp = sys.modules.get("multiprocessing.process")
    if mp is None or not getattr(mp.current_process(), "_inheriting", False):
        return
    from dflow_async.executors._procworker import exit_unguarded_main

    exit_unguarded_main()


# where the library's and the event loop's frames are: a warning names the user's line
_INTERNAL_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (asyncio.__file__, anyio.__file__, __file__)
    if path
)


def _warn_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the user's line that started the run (through
    ``run()``'s event loop or ``await arun()``), not to a line of the library or of anyio:
    the warning filters, and the eye, go by that line."""
    frame = sys._getframe(1)
    level = 2  # warnings.warn's count: 1 is this function, 2 its caller
    while frame is not None and (
        frame.f_code.co_filename.startswith(_INTERNAL_DIRS)
        or frame.f_code.co_filename.startswith("<frozen")
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)


def _warn_edited_ops(run_id: str, recorded: str | None, compiled: Any) -> None:
    """Resuming after fixing an OP is what resume is for, but the steps that finished keep the
    results of the code they ran: say so, naming the OPs, rather than mix the two silently."""
    if not recorded:  # a journal from before OPs' code was recorded
        return
    edited = changed_ops(json.loads(recorded), ops_code(compiled))
    if edited:
        _warn_caller(
            f"run {run_id}: the code of {', '.join(edited)} changed since the run began; "
            "steps that finished keep the results of the old code, the others run the new. "
            "To run everything with the new code, start a new run (reuse_step= keeps "
            "chosen results)",
            EditedOpWarning,
        )


def _warn_edited_inputs(run_id: str, recorded: str | None) -> None:
    """Local input files are read where they are, not copied when a run begins: steps that
    had not run before the crash read them as they are now. Say so, naming the edited ones."""
    if not recorded:
        return
    edited = edited_inputs(json.loads(recorded))
    if edited:
        shown = ", ".join(edited[:5]) + (f" and {len(edited) - 5} more" if len(edited) > 5 else "")
        _warn_caller(
            f"run {run_id}: local input artifacts changed since the run began: {shown}; "
            "steps that had not run yet read them as they are now. To run everything on the "
            "same inputs, start a new run",
            EditedInputWarning,
        )


def _forget_lost(
    run_id: str,
    restored: list[StepRecord],
    units: dict[str, dict[int, list[Any]]],
    store: ArtifactStore,
) -> None:
    """Steps whose outputs the store lost since they finished (a bucket emptied, an S3 server
    that restarted without its data) run again: kept, their consumers would fail on every
    resume, naming a producer that no resume would run."""
    log = logging.getLogger("dflow_async")
    try:
        again = forget_lost(restored, units, store)
    except Exception as exc:  # the store cannot be asked now: consumers will say what is amiss
        log.warning(
            "run %s: could not check the store %s for lost outputs: %s", run_id, store.url, exc
        )
        return
    if again:
        shown = ", ".join(again[:5]) + (f" and {len(again) - 5} more" if len(again) > 5 else "")
        log.warning(
            "run %s: the store %s no longer holds outputs of %s; they run again",
            run_id,
            store.url,
            shown,
        )


def _reuse_records(reuse_step: Sequence[StepRecord] | None) -> list[StepRecord]:
    reuse = list(reuse_step or ())
    for record in reuse:
        if not isinstance(record, StepRecord):
            raise TypeError(
                "reuse_step= takes step records (result.query_step(...) or "
                f"Run.open(run_id).query_step(...)), got {type(record).__name__} {record!r:.60}"
            )
    return reuse


def _require_asyncio() -> None:
    """The scheduler is asyncio's (its task groups, loop callbacks from worker threads): under
    another anyio backend (trio) it would fail deep inside, after writing a journal."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "Workflow.arun() needs an asyncio event loop; under trio, run it in a worker "
            "thread instead: await trio.to_thread.run_sync(wf.run)"
        ) from None


def _default_ctrl_c() -> bool:
    """Whether Ctrl-C has Python's default meaning here, which run() then takes over: not in
    another thread, nor where the application ignores it (a shell's background job) or
    handles it itself."""
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


@contextlib.contextmanager
def _ctrl_c(interrupts: list[int] | None) -> Iterator[None]:
    """Ctrl-C during run(), handled on the event loop: the first cancels the run, which stops
    its attempts and records what finished; another one while that goes on kills the worker
    processes at once (no grace period for OPs that ignore SIGTERM). asyncio's own handling
    (asyncio.Runner) raises KeyboardInterrupt on a second Ctrl-C wherever the loop happens to
    be: raised inside a callback, it lost a task's wake-up, and the cleanup then waited
    forever (the command hung after an impatient double Ctrl-C)."""
    if interrupts is None:
        yield
        return
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_sigint() -> None:
        interrupts.append(signal.SIGINT)
        if len(interrupts) == 1:
            task.cancel()
        else:
            from dflow_async.executors._process import kill_workers_now

            kill_workers_now()

    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows: asyncio's way then
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGINT, previous)  # asyncio.Runner's, for what follows


def _refuse_running_loop() -> None:
    """run() inside an event loop would fail deep in anyio ("Already running asyncio in this
    thread"); say what to do instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "Workflow.run() blocks until the run ends, so it cannot be called from a running "
        "event loop (Jupyter, an async application): use `await wf.arun(...)` there"
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # validate() outside a loop
        return None
