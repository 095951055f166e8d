"""One submission of a compatibility ``Workflow``: a background thread running the native
workflow on its own event loop, its status, and its step records as they arrive.

Runs submitted by this process are in :data:`RUNS`; a run submitted elsewhere is read from its
journal (:class:`StoredRun`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from typing import Any

from dflow_async._records import StepRecord
from dflow_async._workflow import Workflow as _NativeWorkflow
from dflow_async.dflow._adapt import register_reuse, unregister_reuse
from dflow_async.dflow._unsupported import refuse

__all__ = ["RUNS", "Run", "StoredRun"]


class Run:
    """One submission: its thread, status and (live) step records."""

    def __init__(self, run_id: str, kinds: dict[str, str]) -> None:
        self.id = run_id
        self.kinds = kinds  # template name -> "Steps" | "DAG"
        self.status = "Pending"
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self._live: list[StepRecord] = []
        self._seen: set[int] = set()
        self._final: list[StepRecord] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancel = False

    def hook(self, kind: str, record: StepRecord, fields: dict[str, Any]) -> None:
        # runs on the run's loop; list.append is atomic, readers copy
        if id(record) not in self._seen:
            self._seen.add(id(record))
            self._live.append(record)

    def records(self) -> list[StepRecord]:
        return self._final if self._final is not None else list(self._live)

    def main(self, native: _NativeWorkflow, reuse: list[StepRecord]) -> None:
        self.status = "Running"
        if reuse:
            # per-slice keys ({{item}}) are matched by the OP wrapper, in the worker
            table = {r.key: _outputs(r) for r in reuse if r.key and r.phase == "Succeeded"}
            register_reuse(self.id, table)
        try:
            result = asyncio.run(self._arun(native, reuse))
        except BaseException as exc:  # a cancelled or broken run is a failed workflow
            self.error = exc
            if not isinstance(exc, asyncio.CancelledError):
                traceback.print_exc()
            self._final = list(self._live)
            self.status = "Failed"
        else:
            self._final = result.records  # before the status: pollers then read full records
            if result.status != "Succeeded":
                _report(result)  # Dflow prints the failure; a silent "Failed" helps nobody
            self.status = "Succeeded" if result.status == "Succeeded" else "Failed"
        finally:
            unregister_reuse(self.id)

    async def _arun(self, native: _NativeWorkflow, reuse: list[StepRecord]) -> Any:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self._cancel:
            raise asyncio.CancelledError
        # step-level keys are matched by the scheduler (OP steps and Steps/DAG steps alike)
        return await native.arun(run_id=self.id, on_event=self.hook, reuse_step=reuse)

    def cancel(self) -> None:
        self._cancel = True
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)


class StoredRun:
    """A run this process did not submit, read from its journal (``Workflow(id=...)``)."""

    def __init__(self, run: Any) -> None:
        self.id = run.run_id
        self.status = {"Cancelled": "Failed"}.get(run.status, run.status)
        self.thread: threading.Thread | None = None
        self._records: list[StepRecord] = run.records
        # the journal keeps no template kinds: a step with steps under it is a Steps/DAG
        paths = {r.path for r in self._records}
        self.kinds = {
            r.template: "Steps"
            for r in self._records
            if any(p.startswith(r.path + "/") for p in paths)
        }

    def records(self) -> list[StepRecord]:
        return self._records

    def cancel(self) -> None:
        refuse("terminating a run driven by another process")


#: Runs submitted by this process, by id.
RUNS: dict[str, Run] = {}


def _outputs(record: StepRecord) -> dict[str, dict[str, Any]]:
    return {
        "parameters": dict(record.outputs.raw_parameters),
        "artifacts": dict(record.outputs.artifacts),
    }


def _report(result: Any) -> None:
    failed = [r for r in result.records if r.phase == "Failed" and r.errors]
    lines = [f"Workflow {result.run_id} {result.status.lower()}:"]
    lines += [f"  {r.path}: {r.error}" for r in failed[:20]]
    print("\n".join(lines), file=sys.stderr)
