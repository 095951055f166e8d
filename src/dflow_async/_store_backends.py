"""Where the artifact store's bytes live: a local directory, or any fsspec filesystem plus a
local download cache.

Both speak in *keys*, built only by :func:`key` from a fixed section name and a validated hex
digest (``objects/ab/ab12...``), never from a user's string. The store above them decides what
to hash and what to write; a backend only moves bytes atomically and says what exists.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from dflow_async._store_hash import (
    DIGESTS,
    ChangedError,
    hash_fd,
    hash_file,
    parallel_map,
    stat_key,
)
from dflow_async._store_local import (
    READ_ONLY,
    StrPath,
    atomic_copy,
    atomic_write,
    discard_if_damaged,
    ensure_dir,
    is_trusted,
    link_in,
    read_only,
    rename_into,
    temp_name,
)

__all__ = [
    "ATOMIC_PUT_PROTOCOLS",
    "Backend",
    "Fetched",
    "FsspecBackend",
    "LocalBackend",
    "ObjectDir",
    "ObjectProblem",
    "Section",
    "Want",
    "default_cache_dir",
    "key",
    "protocol_problem",
]

Section = Literal["objects", "manifests", "values"]
SECTIONS: tuple[Section, ...] = ("objects", "manifests", "values")
HEX64 = re.compile(r"[0-9a-f]{64}")  # with fullmatch: "$" would let a "\n" end it

# Object stores where one put is all-or-nothing (a multipart upload is invisible until it is
# completed): no temp name needed. Other filesystems (sftp, webdav, hdfs...) write in place, so
# they get a temp key and a rename.
ATOMIC_PUT_PROTOCOLS = frozenset(
    {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"}
)


def key(section: Section, hexdigest: str) -> str:
    """The only way a store key is built: a fixed prefix and a checked digest."""
    if section not in SECTIONS or not HEX64.fullmatch(hexdigest):
        raise ValueError(f"refusing to build a store key from {section!r}, {hexdigest!r}")
    suffix = ".json" if section == "manifests" else ""
    return f"{section}/{hexdigest[:2]}/{hexdigest}{suffix}"


class Want(NamedTuple):  # a tuple: one per file of a directory, made on every get
    """An object someone needs as a local file: its key, digest and size."""

    key: str
    hexdigest: str
    size: int


class Fetched(dict[str, str]):
    """Local paths of fetched objects by key; ``executable`` holds the keys whose file has
    execute bits (a local object keeps those of the file first committed with its bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.executable: set[str] = set()


class ObjectProblem(Exception):
    """Some wanted objects are missing or do not match their digest (keys listed)."""

    def __init__(self, missing: Sequence[str] = (), corrupt: Sequence[str] = ()) -> None:
        self.missing = list(missing)
        self.corrupt = list(corrupt)
        super().__init__(f"missing={self.missing} corrupt={self.corrupt}")


class ObjectDir:
    """A local directory of read-only files named by key: a local store, or a download cache."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self._prefix = f"{root}{os.sep}"

    def path(self, k: str) -> Path:
        return self.root / k

    def spath(self, k: str) -> str:
        return self._prefix + k  # a str: no pathlib parsing on the per-file hot path

    def prepare(self) -> None:
        ensure_dir(self.tmp)

    def lookup(
        self, wants: Sequence[Want], *, verify: bool, threads: int
    ) -> tuple[Fetched, list[Want], list[Want]]:
        """Split ``wants`` into (usable paths, absent, present-but-wrong).

        A read-only file of the right size is trusted by name (see ``is_trusted``); anything
        else, or everything when ``verify``, is re-hashed (in parallel threads).
        """
        good = Fetched()
        absent: list[Want] = []
        to_hash: list[tuple[Want, os.stat_result]] = []
        for w in wants:
            path = self.spath(w.key)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                absent.append(w)
                continue
            if verify or not is_trusted(st, w.size):
                to_hash.append((w, st))
            else:
                good[w.key] = path
                if st.st_mode & 0o111:
                    good.executable.add(w.key)
                # What get materialises from it is a hard link to this very inode: one key
                # serves all of them, and a pass-through of them is then not re-hashed.
                DIGESTS.put(stat_key(st), w.hexdigest)
        digests = parallel_map(lambda ws: hash_file(self.spath(ws[0].key)), to_hash, threads)
        bad: list[Want] = []
        for (w, st), hexdigest in zip(to_hash, digests, strict=True):
            path = self.spath(w.key)
            if hexdigest != w.hexdigest:
                bad.append(w)
                continue
            good[w.key] = path
            if st.st_mode & 0o111:
                good.executable.add(w.key)
            with contextlib.suppress(OSError):
                if st.st_mode & 0o222:  # was chmod'ed writable: restore the guard, exec bits too
                    os.chmod(path, read_only(st.st_mode))
                if stat_key(os.stat(path)) == stat_key(st):  # unchanged while it was hashed
                    DIGESTS.put(stat_key(st), hexdigest)
        return good, absent, bad


class Backend:
    """What the store needs from where it keeps bytes."""

    threads: int

    def check(self) -> None:
        raise NotImplementedError

    def exists(self, k: str) -> bool:
        raise NotImplementedError

    def missing(self, keys: Sequence[str]) -> set[str]:
        flags = parallel_map(self.exists, list(keys), max(self.threads, 16))
        return {k for k, present in zip(keys, flags, strict=True) if not present}

    def write_bytes(self, k: str, data: bytes) -> None:
        raise NotImplementedError

    def store_files(self, items: Sequence[tuple[StrPath, os.stat_result, str]]) -> None:
        """Commit each ``(source, stat before hashing, hex digest)`` as ``objects/<hex>``."""
        raise NotImplementedError

    def fetch(self, wants: Sequence[Want], *, verify: bool) -> Fetched:
        """Local, verified paths for ``wants``; raises ObjectProblem."""
        raise NotImplementedError

    def discard(self, keys: Sequence[str]) -> None:
        """Remove damaged entries, so the next commit of the same content writes them afresh
        (a commit trusts what is stored under a digest). Best effort."""
        raise NotImplementedError


class LocalBackend(Backend):
    """A store on a local filesystem: objects are files under the root, commits are links."""

    def __init__(self, root: Path, threads: int) -> None:
        self.dir = ObjectDir(root)
        self.threads = threads
        self._prepared = False
        self._device = -1

    def _prepare(self) -> None:
        if not self._prepared:
            self.dir.prepare()
            for section in SECTIONS:
                ensure_dir(self.dir.root / section)
            self._device = os.stat(self.dir.root).st_dev  # hard links only work within it
            self._prepared = True

    def check(self) -> None:
        self._prepare()
        # A probe for permissions and read-back, not durability: no fsync, which made this
        # check (run before every workflow run) cost ~1.3 ms instead of ~35 µs here.
        probe = temp_name(self.dir.tmp, ".check")
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
            if os.pread(fd, 2, 0) != b"ok":
                raise OSError(f"{probe} does not read back what was written")
        finally:
            os.close(fd)
            probe.unlink()

    def exists(self, k: str) -> bool:
        return os.path.exists(self.dir.spath(k))

    def missing(self, keys: Sequence[str]) -> set[str]:
        return {k for k in keys if not self.exists(k)}  # a stat each: no threads

    def write_bytes(self, k: str, data: bytes) -> None:
        self._prepare()
        atomic_write(self.dir.path(k), data, self.dir.tmp)

    def store_files(self, items: Sequence[tuple[StrPath, os.stat_result, str]]) -> None:
        for src, st, hexdigest in items:
            if not self._link(src, st, hexdigest):
                self._copy_in(src, hexdigest)

    def cached(self, src: str) -> tuple[str | None, os.stat_result]:
        """(the digest cached for ``src`` under its stat now, or None; that stat).

        The digest may only be trusted to skip work for an object that is present: the caller
        checks that before relying on it (for a whole tree at once, when it can)."""
        st = os.stat(src)
        return DIGESTS.get(stat_key(st)), st

    def commit(self, src: str, st: os.stat_result, *, link: bool = True) -> str:
        """Hash ``src`` (whose stat before hashing is ``st``) and store it if new, all in one
        go: called from many threads at once, so linking overlaps hashing. Returns its digest.

        One open serves the hash and the commit. On the same filesystem the link is tried
        straight away: an object already stored under that digest (the same bytes) answers
        EEXIST, so a new object, the common case, costs no existence check first. Either way
        the producer's file becomes read-only, like every file committed by link."""
        self._prepare()
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            hexdigest = hash_fd(fd, st.st_size)  # always afresh before naming an object
            final = self.dir.spath(key("objects", hexdigest))
            # link=False: the file is not ours (a user's upload), so it is copied
            linked = link and st.st_dev == self._device and link_in(src, fd, final, st)
            if not linked and not discard_if_damaged(final, st.st_size):  # stored already
                if stat_key(os.fstat(fd)) != stat_key(st):
                    raise ChangedError(0, f"{src} changed while it was being hashed")
                linked = True
        finally:
            os.close(fd)
        if not linked:  # another filesystem, or not ours to make read-only: copy
            self._copy_in(src, hexdigest)
        DIGESTS.put(stat_key(st), hexdigest)
        return hexdigest

    def _link(self, src: StrPath, st: os.stat_result, hexdigest: str) -> bool:
        self._prepare()
        if st.st_dev != self._device:
            return False
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return link_in(os.fspath(src), fd, self.dir.spath(key("objects", hexdigest)), st)
        finally:
            os.close(fd)

    def _copy_in(self, src: StrPath, expect: str | None) -> str:
        self._prepare()
        tmp, got, _ = atomic_copy(src, self.dir.tmp)
        try:
            if expect is not None and got != expect:
                raise ChangedError(0, "the file changed while it was being committed")
            final = self.dir.path(key("objects", got))
            if not final.exists():
                rename_into(tmp, final)
            return got
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def fetch(self, wants: Sequence[Want], *, verify: bool) -> Fetched:
        good, absent, bad = self.dir.lookup(wants, verify=verify, threads=self.threads)
        if absent or bad:
            raise ObjectProblem([w.key for w in absent], [w.key for w in bad])
        return good

    def discard(self, keys: Sequence[str]) -> None:
        for k in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir.spath(k))

    def sweep_tmp(self, older_than: float) -> int:
        removed = 0
        cutoff = time.time() - older_than
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dir.tmp) as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed


class FsspecBackend(Backend):
    """Any fsspec filesystem, opened lazily from (url, options) so it survives pickling."""

    def __init__(
        self, url: str, options: dict[str, Any], protocol: str, cache: Path, threads: int
    ) -> None:
        self.url = url
        self.options = options
        self.atomic_put = protocol in ATOMIC_PUT_PROTOCOLS
        self.cache = ObjectDir(cache)
        self.threads = threads
        self._fs: Any = None
        self._root = ""
        self._lock = threading.Lock()

    @property
    def fs(self) -> Any:
        self._open()
        return self._fs

    def _open(self) -> None:
        with self._lock:
            if self._fs is None:
                import fsspec.core

                fs, root = fsspec.core.url_to_fs(self.url, **self.options)
                self._fs, self._root = fs, root.rstrip("/")

    def full(self, k: str) -> str:
        self._open()
        return f"{self._root}/{k}"

    def check(self) -> None:
        probe = self.full(f"tmp/check-{uuid.uuid4().hex}")
        self.fs.pipe_file(probe, b"ok")
        try:
            if self.fs.cat_file(probe) != b"ok":
                raise OSError(f"{probe} does not read back what was written")
        finally:
            self.fs.rm_file(probe)

    def exists(self, k: str) -> bool:
        return bool(self.fs.exists(self.full(k)))

    def discard(self, keys: Sequence[str]) -> None:
        for k in keys:
            with contextlib.suppress(FileNotFoundError):
                self.cache.path(k).unlink()
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.full(k))

    def missing(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        if hasattr(self.fs, "_call_s3"):  # s3fs: one HEAD per key, all in flight at once
            import fsspec.asyn

            flags = fsspec.asyn.sync(self.fs.loop, _s3_heads, self.fs, [self.full(k) for k in keys])
            return {k for k, present in zip(keys, flags, strict=True) if not present}
        return super().missing(keys)

    def write_bytes(self, k: str, data: bytes) -> None:
        if self.atomic_put:
            self.fs.pipe_file(self.full(k), data)
            return
        tmp = self.full(f"tmp/{uuid.uuid4().hex}.part")
        self.fs.makedirs(self.full("tmp"), exist_ok=True)
        self.fs.pipe_file(tmp, data)
        self._rename(tmp, self.full(k))

    def store_files(self, items: Sequence[tuple[StrPath, os.stat_result, str]]) -> None:
        if not items:
            return
        finals = [self.full(key("objects", h)) for _, _, h in items]
        if self.atomic_put:
            self.fs.put([str(p) for p, _, _ in items], finals)
        else:
            for (src, _, _), final in zip(items, finals, strict=True):
                tmp = self.full(f"tmp/{uuid.uuid4().hex}.part")
                self.fs.makedirs(self.full("tmp"), exist_ok=True)
                self.fs.put_file(str(src), tmp)
                self._rename(tmp, final)
        changed = [f for (p, st, _), f in zip(items, finals, strict=True) if _moved(p, st)]
        if changed:  # what was uploaded may not be what was hashed: take it back
            self.fs.rm(changed)
            raise ChangedError(0, "a file changed while it was being uploaded")

    def _rename(self, tmp: str, final: str) -> None:
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(tmp, final)

    def fetch(self, wants: Sequence[Want], *, verify: bool) -> Fetched:
        """Serve from the local cache, downloading (and verifying) only what is not there."""
        self.cache.prepare()
        good, absent, bad = self.cache.lookup(wants, verify=verify, threads=self.threads)
        for w in bad:  # a damaged cache entry is re-downloaded, not reported
            self.cache.path(w.key).unlink()
        good.update(self._download(absent + bad))
        return good

    def _download(self, wants: Sequence[Want]) -> dict[str, str]:
        if not wants:
            return {}
        tmps = [temp_name(self.cache.tmp) for _ in wants]
        try:
            try:
                self.fs.get([self.full(w.key) for w in wants], [str(t) for t in tmps])
            except FileNotFoundError:
                gone = self.missing([w.key for w in wants])
                raise ObjectProblem(missing=sorted(gone) or [w.key for w in wants]) from None
            digests = parallel_map(hash_file, tmps, self.threads)
            corrupt = [w.key for w, h in zip(wants, digests, strict=True) if h != w.hexdigest]
            if corrupt:
                raise ObjectProblem(corrupt=corrupt)
            out = {}
            for w, tmp in zip(wants, tmps, strict=True):
                final = self.cache.path(w.key)
                os.chmod(tmp, READ_ONLY)
                DIGESTS.put(stat_key(os.stat(tmp)), w.hexdigest)  # as lookup does (see there)
                rename_into(tmp, final)
                out[w.key] = str(final)
            return out
        finally:
            for tmp in tmps:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


async def _s3_heads(fs: Any, paths: Sequence[str]) -> list[bool]:
    """Whether each key exists, by HEAD alone: s3fs's ``exists`` follows a miss with a LIST
    (to spot a "directory"), doubling the requests for every object not yet uploaded."""
    import asyncio

    limit = asyncio.Semaphore(64)

    async def head(path: str) -> bool:
        bucket, k, _ = fs.split_path(path)
        async with limit:
            try:
                await fs._call_s3("head_object", Bucket=bucket, Key=k)
            except FileNotFoundError:
                return False
        return True

    return list(await asyncio.gather(*(head(p) for p in paths)))


def _moved(path: StrPath, before: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return True
    return (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns)


def protocol_problem(url: str) -> str | None:
    """Why fsspec cannot open ``url``'s protocol(s), with the package to install; else None."""
    import fsspec
    from fsspec.registry import known_implementations

    for part in url.split("::"):
        protocol = fsspec.core.split_protocol(part)[0] or "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            return (
                f"uses protocol {protocol!r}, which no installed fsspec implementation "
                "provides; install the package that registers it"
            )
        except ImportError as exc:
            spec = known_implementations.get(protocol, {})
            package = str(spec.get("class", "")).split(".")[0]
            how = f"pip install {package}" if package and package != "fsspec" else str(exc)
            return f"needs a package for protocol {protocol!r} that is not installed: {how}"
    return None


def default_cache_dir() -> Path:
    explicit = os.environ.get("DFLOW_ASYNC_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dflow-async" / "artifacts"
