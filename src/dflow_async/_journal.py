"""The durable run journal: SQLite in WAL mode, one per run directory.

It records the workflow's definition digest, every step state change, finished units of
fan-outs (so a resumed fan-out reruns only what was not done), and outputs (JSON, large or
exotic values as blobs beside it). Writes are buffered and committed in one transaction per
burst, with ``synchronous=FULL`` so a committed burst survives power loss.

One driver per run: an exclusive ``flock`` on ``driver.lock`` (released by the kernel when the
driver dies, even by SIGKILL) and a fencing epoch checked inside every write transaction.
"""

from __future__ import annotations

import fcntl
import functools
import itertools
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dflow_async._codec import decode, encode
from dflow_async._records import StepOutputValues, StepRecord
from dflow_async._store_local import ensure_dir
from dflow_async.exceptions import DflowAsyncError

__all__ = ["Journal", "JournalError", "RunBusyError", "RunSnapshot", "read_meta", "read_run"]

SCHEMA_VERSION = 1
JOURNAL_NAME = "journal.sqlite"
LOCK_NAME = "driver.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS steps (
    path TEXT PRIMARY KEY, seq INTEGER NOT NULL, name TEXT NOT NULL, template TEXT NOT NULL,
    key TEXT, phase TEXT NOT NULL, attempts INTEGER NOT NULL, errors TEXT,
    start REAL, "end" REAL, slices INTEGER, failed_slices INTEGER NOT NULL, outputs TEXT,
    workdirs TEXT
);
CREATE TABLE IF NOT EXISTS units (
    path TEXT NOT NULL, unit INTEGER NOT NULL, outputs TEXT NOT NULL, PRIMARY KEY (path, unit)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, path TEXT NOT NULL,
    kind TEXT NOT NULL, attempt INTEGER NOT NULL, detail TEXT
);
"""


# Starting and succeeding are captured by the steps table itself (phase, start, end); the
# events log keeps the transitions worth a line of their own. Halves the rows per step.
_ROUTINE = frozenset({"started", "succeeded", "slice_succeeded", "unit"})


class JournalError(DflowAsyncError):
    """The journal is missing, corrupted, from a newer version, or was taken over; or a
    resume does not match the run it would continue (its definition, its parameters)."""


class RunBusyError(JournalError):
    """Another driver holds the run."""


@dataclass(slots=True)
class RunSnapshot:
    """What a journal says about a run, read without taking the driver lock."""

    run_id: str
    run_dir: Path
    meta: dict[str, str]
    records: list[StepRecord]
    units: dict[str, dict[int, list[Any]]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.meta.get("status", "Unknown")


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    if not create and not path.exists():
        raise JournalError(f"no journal at {str(path)!r}: is this a dflow-async run directory?")
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if not create:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
    except sqlite3.DatabaseError as exc:
        raise JournalError(
            f"the journal {str(path)!r} is corrupted or truncated ({exc}); it cannot be trusted. "
            "Start a new run (reuse_step= can take results from another run)."
        ) from None
    return conn


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"the journal {str(path)!r} has no readable metadata ({exc})") from None
    version = int(meta.get("schema_version", "0") or 0)
    if version == 0:
        raise JournalError(
            f"the journal {str(path)!r} has no schema version: not a dflow-async journal"
        )
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the journal {str(path)!r} has schema version {version}, newer than this "
            f"dflow-async understands ({SCHEMA_VERSION}); upgrade dflow-async to read it"
        )
    return meta


class Journal:
    """The writing side, held by the one driver of a run."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection, lock_fd: int, epoch: int):
        self.run_dir = run_dir
        self.blob_dir = run_dir / "values"
        self._conn = conn
        self._lock_fd = lock_fd
        self.epoch = epoch
        self._steps: dict[str, tuple[StepRecord, int]] = {}  # changed records, this burst
        self._units: list[tuple[str, int, Any]] = []
        self._events: list[tuple[float, str, str, int, str | None]] = []
        self._meta: dict[str, str] = {}
        self._seq = 0
        # One connection, one writer at a time: a cancelled run abandons the flusher's worker
        # thread mid-transaction (asyncio cancellation does not wait for threads), and the last
        # write must queue behind it rather than interleave its BEGIN/COMMIT with it.
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(cls, run_dir: Path, *, meta: dict[str, str]) -> Journal:
        ensure_dir(run_dir)
        path = run_dir / JOURNAL_NAME
        if path.exists():
            raise JournalError(
                f"run directory {str(run_dir)!r} already has a journal; resume it instead"
            )
        lock_fd = _lock(run_dir, meta.get("run_id", run_dir.name))
        # Built under a temporary name and renamed: a journal that exists always has its
        # schema and metadata, even if the driver is killed while creating it.
        staging = run_dir / f".{JOURNAL_NAME}.{os.getpid()}"
        for leftover in run_dir.glob(f".{JOURNAL_NAME}.*"):
            leftover.unlink()
        # owner-only, like every file of a run (SQLite gives its -wal/-shm files this mode)
        os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(staging, isolation_level=None)
        # nobody reads the staging file: no rollback journal, one fsync before the rename
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(_SCHEMA)
        rows = {**meta, "schema_version": str(SCHEMA_VERSION), "epoch": "1"}
        rows.update(_driver_meta())
        with _tx(conn):
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows.items())
        conn.close()
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(staging, 0o600)
        os.rename(staging, path)
        _fsync_dir(run_dir)
        conn = _connect(path, create=True)
        return cls(run_dir, conn, lock_fd, 1)

    @classmethod
    def resume(
        cls, run_dir: Path, check: Callable[[RunSnapshot], None] | None = None
    ) -> tuple[Journal, RunSnapshot]:
        """Take the run over. ``check`` may refuse it (by raising) after reading its journal
        and before anything is written to it: a refused resume leaves the run as it was."""
        path = run_dir / JOURNAL_NAME
        if not path.exists():
            raise JournalError(f"no run journal in {str(run_dir)!r}: nothing to resume")
        lock_fd = _lock(run_dir, run_dir.name)
        try:
            conn = _connect(path, create=False)
            snapshot = _snapshot(conn, run_dir)
            if check is not None:
                try:
                    check(snapshot)
                except BaseException:
                    conn.close()
                    raise
            epoch = int(snapshot.meta.get("epoch", "0")) + 1
            with _tx(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    {"epoch": str(epoch), "status": "Running", **_driver_meta()}.items(),
                )
        except BaseException:
            os.close(lock_fd)
            raise
        journal = cls(run_dir, conn, lock_fd, epoch)
        journal._seq = max((r.seq for r in _seq_rows(conn)), default=0)
        return journal, snapshot

    # ------------------------------------------------------------------ buffering

    def step_changed(self, kind: str, record: StepRecord, attempt: int, detail: str | None) -> None:
        # Only a reference: the row is built from the record's latest state when the burst is
        # written, so a step that starts and succeeds within one burst costs one row.
        steps = self._steps
        if record.path not in steps:
            self._seq += 1
            steps[record.path] = (record, self._seq)
        rec = record
        if kind not in _ROUTINE:
            self._events.append((time.time(), rec.path, kind, attempt, detail))

    def unit_done(self, path: str, unit: int, outputs: Sequence[Any]) -> None:
        self._units.append((path, unit, list(outputs)))

    def set_meta(self, **values: str) -> None:
        self._meta.update(values)

    @property
    def pending(self) -> bool:
        return bool(self._steps or self._units or self._events or self._meta)

    def take(self) -> Any:
        """Detach this burst's rows (on the event loop) to write them elsewhere."""
        burst = (self._steps, self._units, self._events, self._meta)
        self._steps, self._units, self._events, self._meta = {}, [], [], {}
        return burst

    def write(self, burst: Any) -> None:
        """Encode and commit one burst in one fenced transaction (runs in a worker thread)."""
        with self._write_lock:
            self._write(burst)

    def _write(self, burst: Any) -> None:
        steps, units, events, meta = burst
        blob = self.blob_dir
        step_rows = [_step_row(rec, seq, blob) for rec, seq in steps.values()]
        unit_rows = [(p, u, _encode_outputs(o, blob, p)) for p, u, o in units]
        with _tx(self._conn):
            current = self._conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            if current is None or int(current[0]) != self.epoch:
                raise JournalError(
                    f"run {self.run_dir.name} was taken over by another driver (epoch "
                    f"{current[0] if current else '?'} != {self.epoch}); this driver stops writing"
                )
            _insert_many(self._conn, _UPSERT_STEP, step_rows)
            _insert_many(self._conn, "INSERT OR REPLACE INTO units VALUES {rows}", unit_rows)
            self._conn.executemany(
                "INSERT INTO events (ts, path, kind, attempt, detail) VALUES (?,?,?,?,?)", events
            )
            if meta:
                self._conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())

    def close(self) -> None:
        try:
            with self._write_lock:  # an abandoned flusher thread may still be writing
                self._conn.close()
        finally:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1


# ---------------------------------------------------------------------- reading


def read_run(run_dir: Path) -> RunSnapshot:
    """Read a run's journal from any process, while it runs or afterwards."""
    path = run_dir / JOURNAL_NAME
    conn = _connect(path, create=False)
    try:
        return _snapshot(conn, run_dir)
    finally:
        conn.close()


def read_meta(run_dir: Path) -> dict[str, str]:
    """A run's metadata alone (what it was started with), read without the driver lock: a
    resume reads it before it validates the workflow, and takes the run over after that."""
    path = run_dir / JOURNAL_NAME
    if not path.exists():
        raise JournalError(f"no run journal in {str(run_dir)!r}: nothing to resume")
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        return _read_meta(conn, path)
    finally:
        conn.close()


def read_listing(run_dir: Path) -> tuple[dict[str, str], int]:
    """A run's metadata and number of step records, decoding no output: listing runs must
    not load every value every run kept."""
    path = run_dir / JOURNAL_NAME
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        meta = _read_meta(conn, path)
        try:
            (count,) = conn.execute("SELECT count(*) FROM steps").fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"the journal {str(path)!r} cannot be read ({exc})") from None
        return meta, int(count)
    finally:
        conn.close()


def _snapshot(conn: sqlite3.Connection, run_dir: Path) -> RunSnapshot:
    meta = _read_meta(conn, run_dir / JOURNAL_NAME)
    blob = run_dir / "values"
    records = []
    for row in conn.execute(
        'SELECT path, name, template, key, phase, attempts, errors, start, "end", slices, '
        "failed_slices, outputs, workdirs FROM steps ORDER BY seq"
    ):
        outputs = decode(row[11], blob) or {"parameters": {}, "artifacts": {}}
        records.append(
            StepRecord(
                name=row[1],
                path=row[0],
                template=row[2],
                key=row[3],
                phase=row[4],
                attempts=row[5],
                errors=json.loads(row[6]) if row[6] else [],
                start=row[7],
                end=row[8],
                slices=row[9],
                failed_slices=row[10],
                outputs=StepOutputValues(outputs["parameters"], outputs["artifacts"]),
                workdirs=row[12].split("\n") if row[12] else [],
            )
        )
    units: dict[str, dict[int, list[Any]]] = {}
    for path, unit, outputs in conn.execute("SELECT path, unit, outputs FROM units"):
        units.setdefault(path, {})[unit] = decode(outputs, blob)
    return RunSnapshot(meta.get("run_id", run_dir.name), run_dir, meta, records, units)


@dataclass(slots=True)
class _SeqRow:
    seq: int


def _seq_rows(conn: sqlite3.Connection) -> list[_SeqRow]:
    return [_SeqRow(s) for (s,) in conn.execute("SELECT seq FROM steps")]


# ---------------------------------------------------------------------- helpers


class _tx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _lock(run_dir: Path, run_id: str) -> int:
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunBusyError(
            f"run {run_id} is already being driven by {holder}; stop that driver first "
            "(two drivers would run the same steps twice)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _driver_meta() -> dict[str, str]:
    return {"driver_pid": str(os.getpid()), "driver_host": socket.gethostname()}


_UPSERT_STEP = """
INSERT INTO steps VALUES {rows}
ON CONFLICT(path) DO UPDATE SET
    key=excluded.key, phase=excluded.phase, attempts=excluded.attempts,
    errors=excluded.errors, start=excluded.start, "end"=excluded."end",
    slices=excluded.slices, failed_slices=excluded.failed_slices,
    outputs=excluded.outputs, workdirs=excluded.workdirs
"""


_CHUNK = 500  # rows per statement at most (fewer where SQLite allows fewer variables)


def _insert_many(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``executemany``, but many rows per statement: sqlite3 lets go of the GIL for every
    statement it steps, and a thread running steps meanwhile makes each of those a hand-off
    between the two threads, which costs more than writing the row."""
    if not rows:
        return
    width = len(rows[0])
    # SQLite before 3.32 takes 999 variables per statement, later ones 32766 (or what the
    # build says): ask the library in use
    per = max(1, min(_CHUNK, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        conn.execute(_rows_sql(sql, width, len(chunk)), list(itertools.chain.from_iterable(chunk)))


@functools.lru_cache(maxsize=64)
def _rows_sql(sql: str, width: int, count: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return sql.format(rows=",".join([row] * count))


def _step_row(rec: StepRecord, seq: int, blob: Path) -> tuple[Any, ...]:
    """A steps-table row from a record's current state (read in the writer thread: a record
    only moves forward, and its outputs are set before its phase becomes Succeeded)."""
    phase = rec.phase
    outputs = None
    if phase == "Succeeded":
        outputs = _encode_outputs(
            {"parameters": rec.outputs.raw_parameters, "artifacts": rec.outputs.artifacts},
            blob,
            rec.path,
        )
    return (
        rec.path,
        seq,
        rec.name,
        rec.template,
        rec.key,
        phase,
        rec.attempts,
        _json(list(rec.errors)) if rec.errors else None,
        rec.start,
        rec.end,
        rec.slices,
        rec.failed_slices,
        outputs,
        "\n".join(rec.workdirs) if rec.workdirs else None,  # step names cannot hold newlines
    )


def _encode_outputs(value: Any, blob: Path, path: str) -> str:
    try:
        return encode(value, blob)
    except Exception as exc:
        # The scheduler refuses the outputs of a step it runs that cannot be recorded (the
        # step fails); what reaches here came another way (a reuse_step record from a run
        # without a journal, a value changed after its step ended): nothing to fail but the run.
        raise JournalError(
            f"the outputs of step {path!r} cannot be recorded in the run's journal "
            f"({type(exc).__name__}: {exc}), so the run stops (what it recorded before is "
            "kept). The journal pickles what JSON cannot hold, so that a resumed run can reuse "
            "it: outputs, reused records' included, must be picklable"
        ) from exc


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)
