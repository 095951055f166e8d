"""Local-filesystem primitives of the artifact store: atomic writes, hard links, materialising.

Used for the objects of a local store and for the download cache of a remote one; both are a
directory of read-only files named by their sha256.

Atomicity: a file gets its final name only once it is complete. Bytes we write go to a 0o600
temp file in ``tmp/`` (same filesystem), are fsync'ed, made read-only, then renamed into place.
A hard link needs no temp name: it points at the producer's finished file, made read-only
first. A process killed at any point leaves at most a stray file in ``tmp/``, never a
half-written object.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import uuid
from pathlib import Path

from dflow_async._store_hash import CHUNK, ChangedError, stat_key

__all__ = [
    "LINK_FALLBACK_ERRNOS",
    "StrPath",
    "atomic_copy",
    "atomic_write",
    "copy_writable",
    "discard_if_damaged",
    "ensure_dir",
    "is_trusted",
    "link_in",
    "make_fanout_dir",
    "materialise_file",
    "read_only",
    "rename_into",
    "replace_path",
    "temp_name",
]

StrPath = str | os.PathLike[str]

READ_ONLY = 0o400  # owner-only, as every file the library creates
READ_ONLY_EXEC = 0o500

# A hard link can fail for reasons that just mean "copy instead": another filesystem, a link-count
# limit, a filesystem without links, or protected_hardlinks refusing a file we do not own.
LINK_FALLBACK_ERRNOS = frozenset(
    {errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP}
)


def ensure_dir(path: str | os.PathLike[str]) -> None:
    """``mkdir -p`` that makes every directory it creates owner-only (``os.makedirs`` gives
    its mode to the last one only; the others get the umask's 0o755)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
    except FileNotFoundError:
        text = os.fspath(path).rstrip("/")
        parent = os.path.dirname(text)
        if not parent or parent == text:
            raise
        ensure_dir(parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)


def rename_into(src: Path, final: Path) -> None:
    """``os.rename``, creating the fan-out directory only when it is missing (rarely: checking
    first would cost a syscall per object)."""
    try:
        os.rename(src, final)
    except FileNotFoundError:
        ensure_dir(final.parent)
        os.rename(src, final)


_TEMP_PREFIX = uuid.uuid4().hex[:16]  # unique to this process (re-drawn after fork below)
_temp_counter = itertools.count()


def _new_prefix() -> None:
    global _TEMP_PREFIX
    _TEMP_PREFIX = uuid.uuid4().hex[:16]


os.register_at_fork(after_in_child=_new_prefix)


def temp_name(tmp_dir: Path, suffix: str = ".part") -> Path:
    """A name no other process or thread will use: a per-process random prefix and a counter
    (a uuid4 per object costs a getrandom() call per file)."""
    return tmp_dir / f"{_TEMP_PREFIX}-{next(_temp_counter)}{suffix}"


def read_only(mode: int) -> int:
    """The read-only mode for a materialised file: keep execute bits, drop all write bits."""
    return READ_ONLY_EXEC if mode & 0o111 else READ_ONLY


def is_trusted(st: os.stat_result, size: int) -> bool:
    """The cheap check of the hard-link fast path: a read-only regular file of the right size.

    A content-addressed name plus these two facts is trusted without re-hashing. What that
    misses: someone who chmods the object writable, rewrites it with the same length and makes
    it read-only again. ``verify=True`` re-hashes for the cases where that matters.
    """
    return (st.st_mode & 0o170000) == 0o100000 and not st.st_mode & 0o222 and st.st_size == size


def atomic_write(final: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``final`` atomically, read-only."""
    tmp = temp_name(tmp_dir)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.fchmod(fd, READ_ONLY)
        finally:
            os.close(fd)
        rename_into(tmp, final)
    finally:
        _unlink_quietly(tmp)


def atomic_copy(src: StrPath, tmp_dir: Path) -> tuple[Path, str, int]:
    """Copy ``src`` into a read-only temp file in ``tmp_dir`` while hashing it.

    Returns (temp path, hex digest, size); the caller renames it into place or removes it.
    One read of the source does both jobs.
    """
    tmp = temp_name(tmp_dir)
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(src, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    h.update(view[:n])
                    out = view[:n]
                    while out:
                        out = out[os.write(fd, out) :]
                    size += n
            os.fsync(fd)
            os.fchmod(fd, READ_ONLY)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp, h.hexdigest(), size


def link_in(src: str, fd: int, final: str, expect: os.stat_result) -> bool:
    """Commit ``src``, open as ``fd``, as ``final`` by hard link (zero-copy), read-only.

    The inode is made read-only *before* the link gives it its final name, so an object is
    never visible writable; the bytes are the producer's finished file, so the one ``link``
    call is the atomic commit (no temp name needed). ``expect`` is the stat taken before
    ``fd`` was hashed: if what ``src`` names now is another inode, or its size or mtime moved,
    the bytes are not the ones hashed and ChangedError is raised. Returns False when a link is
    impossible here (copy instead).
    """
    try:
        os.fchmod(fd, read_only(expect.st_mode))  # the producer's file becomes read-only too
    except PermissionError:
        return False  # not our file: copying is the only way to make the object read-only
    if stat_key(os.stat(src)) != stat_key(expect):  # by path: the name we are about to link
        raise ChangedError(errno.EAGAIN, "the file changed while it was being committed")
    try:
        try:
            os.link(src, final)
        except FileNotFoundError:  # first object of its fan-out directory
            make_fanout_dir(os.path.dirname(final))
            os.link(src, final)
    except FileExistsError:
        # stored already (or concurrently) under the same digest: the same bytes, unless the
        # store was damaged; one of another size is replaced, so re-running a producer repairs
        if discard_if_damaged(final, expect.st_size):
            os.link(src, final)
        return True
    except OSError as exc:
        if exc.errno not in LINK_FALLBACK_ERRNOS:
            raise
        os.fchmod(fd, expect.st_mode & 0o7777)  # leave the producer's file as it was
        return False
    return True


def discard_if_damaged(final: str, size: int) -> bool:
    """Remove the object ``final`` if its size is not ``size``. True: no object is there now."""
    try:
        if os.stat(final).st_size == size:
            return False
        os.unlink(final)
    except FileNotFoundError:
        pass
    return True


def make_fanout_dir(path: str) -> None:
    """``objects/ab``: its parent exists (made when the store was prepared), so one mkdir."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # another thread or process made it first
    except FileNotFoundError:
        ensure_dir(Path(path))


def materialise_file(
    obj: StrPath, dest: StrPath, *, mode: int, link: bool, obj_exec: bool | None = None
) -> bool:
    """Put the object's bytes at ``dest`` (which must not exist); True if it is a hard link.

    ``link=True``: a hard link (no bytes copied), read-only because it *is* the stored object,
    when the object's execute bits agree with ``mode`` (one object serves executable and plain
    files of the same bytes); otherwise a read-only copy with ``mode``'s execute bits.
    ``obj_exec``: whether the object is executable, if known (else it is stat'ed).
    ``link=False``: a private writable copy with ``mode``.
    """
    if link and obj_exec is None:
        obj_exec = bool(os.stat(obj).st_mode & 0o111)
    if link and obj_exec == bool(mode & 0o111):
        try:
            os.link(obj, dest)
            return True
        except OSError as exc:
            if exc.errno not in LINK_FALLBACK_ERRNOS:
                raise
    _copy_file(obj, dest)
    os.chmod(dest, read_only(mode) if link else (mode | 0o200))
    return False


def copy_writable(src: StrPath, dest: StrPath) -> StrPath:
    """A private writable copy of ``src`` (0o644, 0o755 if it is executable), whatever the
    source's mode: ``shutil.copytree``'s ``copy_function`` for copies handed to users
    (``copy2`` would keep a stored object's read-only mode)."""
    mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
    if os.path.lexists(dest):  # copytree(dirs_exist_ok=True) copies over what is there
        os.unlink(dest)
    _copy_file(src, dest)
    os.chmod(dest, mode)
    return dest


def _copy_file(src: StrPath, dest: StrPath) -> None:
    """Copy, cloning the blocks when the filesystem can (btrfs, xfs: a reflink is free)."""
    try:
        import fcntl

        ficlone = 0x40049409  # FICLONE ioctl on Linux
        with open(src, "rb") as s, open(dest, "xb") as d:
            fcntl.ioctl(d.fileno(), ficlone, s.fileno())
        return
    except (ImportError, OSError):
        _unlink_quietly(dest)
    shutil.copyfile(src, dest)


def replace_path(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, replacing what was there (file, link or directory)."""
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def _unlink_quietly(path: StrPath) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
