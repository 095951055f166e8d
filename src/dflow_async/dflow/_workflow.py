"""Dflow's ``Workflow``: ``submit()`` returns at once, the run goes on in the background.

Each submission runs the native workflow on its own event loop in a background thread, the
closest local analogue of handing the workflow to Argo: ``query_status()`` and ``query_step()``
work while it runs, ``wait()`` joins it, ``terminate()`` cancels it (running attempts are
stopped). ``Workflow(id=...)`` finds a run of this process, or reads another's from its journal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from dflow_async._graph import DAG as _NativeDAG
from dflow_async._graph import Step as _NativeStep
from dflow_async._graph import Template
from dflow_async._records import StepOutputValues, StepRecord
from dflow_async._refs import uses_item
from dflow_async._workflow import Workflow as _NativeWorkflow
from dflow_async._workflow import check_run_id, check_workflow_name
from dflow_async.dflow._adapt import KEY_PORT, ForeignOP
from dflow_async.dflow._argo_objects import ArgoStep
from dflow_async.dflow._config import config, storage_options, store_root, store_url
from dflow_async.dflow._run import RUNS, Run, StoredRun
from dflow_async.dflow._templates import DAG, Steps, randstr
from dflow_async.dflow._unsupported import refuse

__all__ = ["Workflow"]

log = logging.getLogger("dflow_async.dflow")


class WorkflowInfo:
    """What ``submit()`` and ``query()`` return (Dflow's ``ArgoWorkflow``)."""

    def __init__(self, wf: Workflow) -> None:
        self.id = self.uid = wf.id
        self._wf = wf

    @property
    def phase(self) -> str:
        return self._wf.query_status()

    def get_step(self, **filters: Any) -> list[ArgoStep]:
        return self._wf.query_step(**filters)

    def __repr__(self) -> str:
        return f"<Workflow {self.id} {self.phase}>"


class Workflow:
    """Dflow's ``Workflow(name, steps=None, dag=None, ...)``.

    Argo/Kubernetes settings (host, namespace, token, labels, image_pull_secrets...) are
    accepted and have no effect. dflow-async's own: ``executor=`` (default
    ``config["executor"]``, ``"inline"``), ``store=`` (default ``config["store"]``) and
    ``storage_options=`` for an object store (default: from ``s3_config``, see
    :mod:`._config`).
    """

    def __init__(
        self,
        name: str = "workflow",
        steps: Steps | None = None,
        dag: DAG | None = None,
        namespace: str | None = None,
        id: str | None = None,
        uid: str | None = None,
        host: str | None = None,
        token: str | None = None,
        k8s_config_file: str | None = None,
        k8s_api_server: str | None = None,
        context: Any = None,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        parallelism: int | None = None,
        pod_gc_strategy: str | None = None,
        image_pull_secrets: Any = None,
        artifact_repo_key: str | None = None,
        parameters: dict[str, Any] | None = None,
        on_exit: Any = None,
        *,
        executor: Any = None,
        store: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if context is not None:
            refuse("Workflow(context=...) (Dflow executor/context rendering)", "use executor=")
        if parameters:
            refuse(
                "Workflow(parameters=...) (workflow-global parameters)",
                "declare them as inputs of the entry Steps/DAG, with defaults",
            )
        if on_exit is not None:
            refuse("Workflow(on_exit=...) (Argo exit handlers)", "run it after wf.wait()")
        if steps is not None and dag is not None:
            raise ValueError(f"Workflow {name!r}: pass steps= or dag=, not both")
        check_workflow_name(name)
        self.name = name
        self.entrypoint: Template | None = steps if steps is not None else dag
        self.id = id
        self.uid = uid if uid is not None else id
        self.parallelism = parallelism
        self.executor = executor
        self.store = store
        self.storage_options = storage_options
        self.namespace = namespace
        self.labels = labels or {}
        self.annotations = annotations or {}

    def add(self, step: Any) -> None:
        """Add a step (or a list of parallel steps) to the entry template."""
        if self.entrypoint is None:
            group = step if isinstance(step, list) else [step]
            from dflow_async.dflow._step import Task

            if group and all(isinstance(s, Task) for s in group):
                self.entrypoint = DAG(f"{self.name}-dag")
            else:
                self.entrypoint = Steps(f"{self.name}-steps")
        self.entrypoint.add(step)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ running

    def submit(self, reuse_step: Sequence[ArgoStep] | None = None) -> WorkflowInfo:
        """Validate, then start the run in the background and return at once.

        ``reuse_step``: steps of an earlier run (``query_step``); a step of this run whose
        rendered key matches one of them is not executed, its (possibly modified) outputs are
        used instead.
        """
        if self.entrypoint is None:
            raise ValueError(f"workflow {self.name!r} has no steps: add() some first")
        known = RUNS.get(self.id) if self.id else None
        if known is not None and known.status in ("Pending", "Running", "Succeeded"):
            log.warning("workflow %s is %s; not submitted again", self.id, known.status.lower())
            return WorkflowInfo(self)
        entry = self.entrypoint
        native = self.native_workflow()
        native.validate()  # every problem, now, before anything runs
        reuse = _reuse_records(reuse_step, entry)
        self.id = self.id or f"{self.name}-{randstr()}"
        check_run_id(self.id, "id")  # here, not in the run's thread
        self.uid = self.uid or self.id
        run = RUNS[self.id] = Run(self.id, _template_kinds(entry))
        run.thread = threading.Thread(
            target=run.main, args=(native, reuse), name=f"dflow-workflow-{self.id}"
        )
        run.thread.start()
        print(f"Workflow has been submitted (ID: {self.id})")
        return WorkflowInfo(self)

    def native_workflow(self) -> _NativeWorkflow:
        """The native workflow a submission runs (``dflow-async run FILE.py`` runs it too)."""
        entry = self.entrypoint
        if entry is None:
            raise ValueError(f"workflow {self.name!r} has no steps: add() some first")
        store = store_url(self.store)
        options = self.storage_options
        return _NativeWorkflow(
            self.name,
            steps=None if isinstance(entry, _NativeDAG) else entry,  # type: ignore[arg-type]
            dag=entry if isinstance(entry, _NativeDAG) else None,
            parallelism=self.parallelism,
            executor=self.executor if self.executor is not None else config["executor"],
            store=store,
            storage_options=options if options is not None else storage_options(store),
        )

    def wait(self, interval: float = 1) -> None:
        """Block until the run ends."""
        thread = self._run().thread
        if thread is not None:
            thread.join()

    def terminate(self) -> None:
        """Stop the run: running attempts are cancelled; the status becomes Failed."""
        self._run().cancel()

    stop = terminate

    # ------------------------------------------------------------------ queries

    def _run(self) -> Run | StoredRun:
        run = RUNS.get(self.id) if self.id else None
        if run is not None:
            return run
        if self.id is None:
            raise RuntimeError(f"workflow {self.name!r} has not been submitted")
        from dflow_async._runs import Run as JournaledRun

        return StoredRun(JournaledRun.open(self.id, store=store_root(self.store)))

    def query_status(self) -> str:
        """Pending, Running, Succeeded or Failed."""
        return self._run().status

    def query(self, fields: Any = None) -> WorkflowInfo:
        self._run()
        return WorkflowInfo(self)

    def query_step(
        self,
        name: str | list[str] | None = None,
        key: str | list[str] | None = None,
        phase: str | list[str] | None = None,
        id: str | list[str] | None = None,
        type: str | list[str] | None = None,
        parent_id: str | None = None,
        sort_by_generation: bool = False,
    ) -> list[ArgoStep]:
        """Steps matching every filter, in start order. ``name`` matches a step's name (and
        its slices ``name[i]``) or its path in the run."""
        run = self._run()
        names, keys, phases = _as_set(name), _as_set(key), _as_set(phase)
        ids, types = _as_set(id), _as_set(type)
        found = []
        for rec in run.records():
            if names is not None and not any(
                rec.name == n or rec.path == n or rec.name.startswith(n + "[") for n in names
            ):
                continue
            if keys is not None and rec.key not in keys:
                continue
            if ids is not None and rec.path not in ids:
                continue
            if parent_id is not None and not rec.path.startswith(parent_id + "/"):
                continue
            step = ArgoStep(rec, run.id, run.kinds.get(rec.template, "Pod"))
            if phases is not None and step.phase not in phases:
                continue
            if types is not None and step.type not in types:
                continue
            found.append(step)
        if sort_by_generation:
            found.sort(key=lambda s: s.name.count("/"))
        return found

    def query_step_by_key(
        self,
        key: str | list[str],
        name: str | list[str] | None = None,
        phase: str | list[str] | None = None,
        id: str | list[str] | None = None,
        type: str | list[str] | None = None,
    ) -> list[ArgoStep]:
        return self.query_step(name=name, key=key, phase=phase, id=id, type=type)

    def query_keys_of_steps(self) -> list[str]:
        return [rec.key for rec in self._run().records() if rec.key is not None]

    # ------------------------------------------------------------------ refused

    def query_global_outputs(self) -> Any:
        refuse("Workflow.query_global_outputs() (global_name outputs)", "query the step instead")

    def __enter__(self) -> Workflow:
        refuse("with Workflow(...) (Dflow's context syntax)", "add Steps/Tasks and submit()")

    def __exit__(self, *exc: Any) -> None:
        return None

    def _refused(self, what: str) -> Any:
        refuse(f"Workflow.{what}() (Argo server operation)")

    def suspend(self) -> None:
        self._refused("suspend")

    def resume(self) -> None:
        self._refused("resume")

    def retry(self) -> None:
        self._refused("retry")

    def resubmit(self) -> None:
        self._refused("resubmit")

    def delete(self) -> None:
        self._refused("delete")

    def retry_steps(self, step_ids: Any) -> None:
        self._refused("retry_steps")

    def to_dict(self) -> None:
        self._refused("to_dict")

    def to_yaml(self, **kwargs: Any) -> None:
        self._refused("to_yaml")

    def to_json(self, **kwargs: Any) -> None:
        self._refused("to_json")

    def convert_to_argo(self, reuse_step: Any = None) -> None:
        self._refused("convert_to_argo")


def _as_set(value: str | list[str] | None) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def _template_kinds(entry: Template) -> dict[str, str]:
    kinds: dict[str, str] = {}
    todo = [entry]
    while todo:
        tpl = todo.pop()
        if tpl.name in kinds:
            continue
        kinds[tpl.name] = "DAG" if isinstance(tpl, _NativeDAG) else "Steps"
        todo.extend(s.template for s in tpl.steps if isinstance(s.template, Template))
    return kinds


def _reuse_records(reuse_step: Sequence[Any] | None, entry: Template) -> list[StepRecord]:
    """The scheduler's re-use records for Dflow's ``reuse_step`` (modified outputs included)."""
    records: list[StepRecord] = []
    for step in reuse_step or []:
        if isinstance(step, StepRecord):
            records.append(step)
            continue
        if getattr(step, "key", None) is None:
            continue  # as in Dflow: only keyed steps can be matched
        records.append(
            StepRecord(
                name=step.displayName,
                path=step.name,
                template=step.templateName,
                key=step.key,
                phase=step.phase,
                outputs=StepOutputValues(
                    {n: p.value for n, p in step.outputs.parameters.items()},
                    {n: a.local_path for n, a in step.outputs.artifacts.items()},
                ),
            )
        )
    if records:
        for s in _keyed_steps(entry):
            if (s.slices is not None or s.with_param is not None) and uses_item(s.key):
                op = s.template
                if not (isinstance(op, ForeignOP) and KEY_PORT in op.input_ports()):
                    log.warning(
                        "fan-out step %r keys its slices but is not a PythonOPTemplate step: "
                        "reuse_step cannot match its slices, they always run",
                        s.name,
                    )
    return records


def _keyed_steps(entry: Template) -> list[_NativeStep]:
    found: list[_NativeStep] = []
    seen: set[int] = set()
    todo = [entry]
    while todo:
        tpl = todo.pop()
        if id(tpl) in seen:
            continue
        seen.add(id(tpl))
        for s in tpl.steps:
            if isinstance(s.template, Template):
                todo.append(s.template)
            if s.key is not None:
                found.append(s)
    return found
