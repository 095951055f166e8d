"""Hashing for the artifact store: sha256 of files in 1 MiB chunks, in parallel threads, with a
per-process cache of digests keyed by what ``stat`` says about a file.

Why a cache: an OP that passes its input through (returns the file it was given) hands back a
hard link of an object the store already holds. Re-hashing it would read every byte again just
to learn a digest we had a moment ago when the file was materialised. The key is
``(st_dev, st_ino, st_size, st_mtime_ns)``: same inode, same size, same mtime.

What the cache may be trusted for: a hit only ever lets the store *skip* work (the object of
that digest already exists, so nothing is written). Whenever a new object is written, its bytes
are hashed afresh, so a stale entry (someone rewrote a file and reset its mtime) can never put
wrong bytes under a digest.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = [
    "CHUNK",
    "DIGESTS",
    "ChangedError",
    "DigestCache",
    "StatKey",
    "cached_hash",
    "default_threads",
    "hash_bytes",
    "hash_fd",
    "hash_file",
    "parallel_map",
    "stat_key",
    "triage_map",
]

CHUNK = 1 << 20  # 1 MiB: large enough that hashlib releases the GIL and syscalls are few

StatKey = tuple[int, int, int, int]


class ChangedError(OSError):
    """A source file changed while it was being hashed or committed."""


T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_local = threading.local()


def _buffer() -> bytearray:
    # One 1 MiB buffer per thread: allocating (and zeroing) one per file costs more than
    # hashing a small file.
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(CHUNK)
    return buf


def hash_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks into a reused buffer."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def hash_fd(fd: int, size: int = -1) -> str:
    """Hex sha256 of what ``fd`` reads from its current offset to the end.

    With ``size`` (the file's size from a stat taken before), reading stops after ``size``
    bytes, which saves the final empty ``read`` per file; a file that grew meanwhile is caught
    by the caller's stat after hashing, which sees the new size."""
    h = hashlib.sha256()
    buf = _buffer()
    view = memoryview(buf)
    while size:
        n = os.readv(fd, [buf])  # readinto without a file object (3.11 has no os.readinto)
        if not n:
            break
        h.update(view[:n] if n < CHUNK else buf)
        size -= n
    return h.hexdigest()


class DigestCache:
    """A bounded LRU map ``StatKey -> hex digest``, safe to use from several threads."""

    def __init__(self, max_entries: int = 262_144) -> None:
        self._max = max_entries
        self._data: OrderedDict[StatKey, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: StatKey) -> str | None:
        with self._lock:
            hexdigest = self._data.get(key)
            if hexdigest is not None:
                self._data.move_to_end(key)
            return hexdigest

    def put(self, key: StatKey, hexdigest: str) -> None:
        with self._lock:
            self._data[key] = hexdigest
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


# One cache per process: a digest describes bytes, not a store, so every store shares it.
DIGESTS = DigestCache()


def default_threads() -> int:
    # Hashing is CPU-bound with the GIL released; more threads than cores only adds contention.
    return max(1, min(8, os.cpu_count() or 1))


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], threads: int, *, chunk: int = 1
) -> list[R]:
    """``[fn(x) for x in items]``, on ``threads`` threads (the caller's among them).

    Workers claim ``chunk`` items at a time from a shared counter, so a slow item (a big file)
    never leaves the other threads idle behind a static split, and the last item to finish is
    at most one chunk after the others. No future per item: claiming is a lock and an add.
    The first exception stops every worker at its next claim and is raised here."""
    n = len(items)
    chunk = max(1, chunk)
    threads = min(threads, -(-n // chunk))
    if threads <= 1:
        return [fn(x) for x in items]
    out: list[Any] = [None] * n
    errors: list[BaseException] = []
    lock = threading.Lock()
    claimed = 0

    def work() -> None:
        nonlocal claimed
        while not errors:
            with lock:
                start = claimed
                claimed += chunk
            if start >= n:
                return
            try:
                for i in range(start, min(start + chunk, n)):
                    out[i] = fn(items[i])
            except BaseException as exc:
                errors.append(exc)

    helpers = [threading.Thread(target=work, daemon=True) for _ in range(threads - 1)]
    for t in helpers:
        t.start()
    try:
        work()
    finally:
        for t in helpers:
            t.join()
    if errors:
        raise errors[0]
    return out


def triage_map(
    first: Callable[[T], tuple[R | None, S]],
    rest: Callable[[T, S], R],
    items: Sequence[T],
    threads: int,
) -> list[R]:
    """For each item, ``first(x)``'s result, or when that is None, ``rest(x, state)`` with the
    state ``first`` returned; ``rest`` runs on helper threads, overlapping the triage.

    Made for items that are mostly all cheap (a pass-through tree: a stat and a cache hit each)
    or mostly all dear (new files: hashing). The caller triages every item itself, in order:
    handing cheap ones to a pool would cost more in thread hops and GIL hand-offs than they
    take. Dear ones are queued as soon as they are seen, so the helpers hash while the caller
    triages; then the caller joins them on what is left. The first exception stops the work
    and is raised here.
    """
    n = len(items)
    out: list[Any] = [None] * n
    errors: list[BaseException] = []
    todo: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
    queued = 0
    helpers: list[threading.Thread] = []

    def work() -> None:
        while (job := todo.get()) is not None:
            if errors:
                continue  # drain to the sentinel: every thread must reach its own
            i, state = job
            try:
                out[i] = rest(items[i], state)
            except BaseException as exc:
                errors.append(exc)

    try:
        for i, x in enumerate(items):
            result, state = first(x)
            if result is not None:
                out[i] = result
                continue
            todo.put((i, state))
            queued += 1
            if len(helpers) < min(threads, n) - 1 and queued > len(helpers):
                helpers.append(threading.Thread(target=work, daemon=True))
                helpers[-1].start()
    except BaseException as exc:
        errors.append(exc)
    finally:
        for _ in range(len(helpers) + 1):
            todo.put(None)
        work()
        for t in helpers:
            t.join()
    if errors:
        raise errors[0]
    return out


def cached_hash(
    path: str | os.PathLike[str], st: os.stat_result, *, use_cache: bool = True
) -> tuple[str, bool]:
    """(hex digest, came from the cache) of the file whose stat before hashing is ``st``.

    A miss hashes the file; if the file moved while it was read, the digest describes no
    particular version of it, and ChangedError is raised.
    """
    key = stat_key(st)
    if use_cache and (hit := DIGESTS.get(key)) is not None:
        return hit, True
    hexdigest = hash_file(path)
    if stat_key(os.stat(path)) != key:
        raise ChangedError(0, f"{path} changed while it was being hashed")
    DIGESTS.put(key, hexdigest)
    return hexdigest, False
