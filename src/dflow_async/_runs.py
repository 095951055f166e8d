"""Inspecting runs from any process: ``Run.open(run_id)`` and ``list_runs()``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dflow_async._journal import (
    JOURNAL_NAME,
    LOCK_NAME,
    JournalError,
    RunSnapshot,
    read_listing,
    read_run,
)
from dflow_async._records import StepRecord, name_outputs

__all__ = ["Run", "list_runs"]


def _store_root(store: str | os.PathLike[str] | None) -> Path:
    from dflow_async._workflow import runs_home

    return runs_home(store)


def _is_local_url(url: str) -> bool:
    from dflow_async._workflow import _is_local_url

    return _is_local_url(url)


class Run:
    """A run as its journal records it: ``status``, ``records``, ``query_step(...)``.

    Reading takes no lock, so it works while the run's driver is still going; what it shows
    is what the driver had made durable.
    """

    def __init__(
        self, snapshot: RunSnapshot, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.run_id = snapshot.run_id
        self.run_dir = snapshot.run_dir
        self.meta = snapshot.meta
        self._storage_options = storage_options
        self._read: list[StepRecord] | None = snapshot.records
        self._count = len(snapshot.records)
        self._named = False
        _attach_store(snapshot.records, self.meta.get("store"), storage_options)

    @classmethod
    def _listed(
        cls, run_dir: Path, meta: dict[str, str], count: int, storage_options: dict[str, Any] | None
    ) -> Run:
        """A run as listed: its records are read from the journal when first asked for."""
        run = cls(RunSnapshot(meta.get("run_id", run_dir.name), run_dir, meta, []), storage_options)
        run._read, run._count = None, count
        return run

    @property
    def _records(self) -> list[StepRecord]:
        if self._read is None:
            snapshot = read_run(self.run_dir)
            self.meta = snapshot.meta
            self._read, self._count = snapshot.records, len(snapshot.records)
            _attach_store(self._read, self.meta.get("store"), self._storage_options)
        return self._read

    @property
    def records(self) -> list[StepRecord]:
        records = self._records
        if not self._named:  # named when taken: a run is mostly queried
            name_outputs(records)
            self._named = True
        return records

    @property
    def step_count(self) -> int:
        """How many step records the run has (as ``len(records)``, without reading them)."""
        return self._count if self._read is None else len(self._read)

    @classmethod
    def open(
        cls,
        run_id: str | os.PathLike[str],
        *,
        store: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> Run:
        """The run ``run_id`` of ``store``, or the run directory ``run_id`` names when it is a
        path (a result's ``.run_dir``). ``store`` is the value given to ``Workflow(store=)``
        (runs on a remote store are journaled under ``$DFLOW_ASYNC_HOME``, ``./.dflow-async``).
        ``storage_options`` are for reading a remote store's BigParameter values."""
        if isinstance(run_id, os.PathLike):  # a run directory (a result's .run_dir)
            run_dir = Path(run_id)
        elif isinstance(run_id, str) and run_id:
            run_dir = _store_root(store) / "runs" / run_id
        else:
            raise TypeError(
                f"Run.open() takes a run id (a result's .run_id, or one `dflow-async list` "
                f"shows) or a run directory, got {run_id!r:.60}"
            )
        if not (run_dir / JOURNAL_NAME).exists():
            known = ", ".join(r.run_id for r in list_runs(store=store)[-5:]) or "none"
            advice = (
                "run from the directory the run was started in, or point at its store "
                "(store= in Python, --store or $DFLOW_ASYNC_HOME for the CLI)"
            )
            if store is not None and not _is_local_url(os.fspath(store)):
                # given already: a remote store holds no journals, so --store cannot find them
                advice = (
                    f"runs on {os.fspath(store)} keep their journals locally: run from the "
                    "directory the run was started in, or set $DFLOW_ASYNC_HOME to its "
                    ".dflow-async directory"
                )
            raise JournalError(
                f"no run {run_id!r} under {str(run_dir.parent)!r} (recent runs: {known}); {advice}"
            )
        return cls(read_run(run_dir), storage_options)

    @property
    def status(self) -> str:
        """As the journal says; ``"Interrupted"`` for a run it calls Running whose driver is
        gone (killed: nothing holds the run's lock any more). Resume it to go on."""
        status = self.meta.get("status", "Unknown")
        if status == "Running" and driver_alive(self.run_dir) is False:
            return "Interrupted"
        return status

    @property
    def workflow(self) -> str:
        return self.meta.get("workflow", "?")

    @property
    def created(self) -> float | None:
        value = self.meta.get("created")
        return float(value) if value else None

    @property
    def ended(self) -> float | None:
        value = self.meta.get("ended")
        return float(value) if value and self.status != "Running" else None

    def query_step(
        self,
        name: str | Sequence[str] | None = None,
        key: str | Sequence[str] | None = None,
        phase: str | Sequence[str] | None = None,
    ) -> list[StepRecord]:
        from dflow_async._workflow import select_records

        return select_records(self._records, name=name, key=key, phase=phase)

    def __repr__(self) -> str:
        return f"<Run {self.run_id} {self.status}: {self.step_count} steps>"


def driver_alive(run_dir: Path) -> bool | None:
    """Whether a driver holds the run's lock, read from ``/proc/locks`` (Linux): taking the
    lock to find out could make a driver starting at that moment fail. None: cannot tell."""
    try:
        st = os.stat(Path(run_dir) / LOCK_NAME)
        with open("/proc/locks") as fh:
            table = fh.read()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(
        len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == wanted
        for fields in (line.split() for line in table.splitlines())
    )


def _attach_store(
    records: list[StepRecord], url: str | None, storage_options: dict[str, Any] | None = None
) -> None:
    """The journal keeps BigParameter outputs as bare references: point them at the run's
    store, so that ``record.outputs.parameters`` can load their values."""
    from dflow_async._store import ArtifactStore
    from dflow_async._stored import big_values

    store = None
    for record in records:
        for value in record.outputs.raw_parameters.values():
            # in a fan-out's stacked list too (lists of lists for a fan-out of fan-outs)
            for v in big_values(value):
                if v.store is None and url:
                    if store is None:
                        store = ArtifactStore(url, storage_options)
                    v.store = store


def list_runs(
    *, store: str | os.PathLike[str] | None = None, storage_options: dict[str, Any] | None = None
) -> list[Run]:
    """Every run of the store (as for :meth:`Run.open`), oldest first; unreadable journals
    are skipped."""
    runs_dir = _store_root(store) / "runs"
    found: list[Run] = []
    if not runs_dir.is_dir():
        return found
    for run_dir in runs_dir.iterdir():
        if (run_dir / JOURNAL_NAME).exists():
            try:
                meta, count = read_listing(run_dir)
            except JournalError:
                continue
            found.append(Run._listed(run_dir, meta, count, storage_options))
    found.sort(key=lambda r: r.created or 0.0)
    return found
