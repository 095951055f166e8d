"""The artifact store: content-addressed files, directories and big values on any fsspec URL.

Layout under the store's root URL (a local path, ``file://``, ``memory://``, ``s3://bucket/p``...)::

    objects/ab/ab12...ef          one file's bytes, named by their sha256
    manifests/cd/cd34...01.json   one directory: {relative path: {digest, size, mode}}, dirs, links
    values/ef/ef56...23           one BigParameter (JSON, or a pickle when JSON cannot hold it)
    tmp/                          staging on local stores; stray files here are never read

Guarantees, and what they cost:

* **Dedupe.** Identical bytes are stored once; a directory where one file changed uploads that
  file and a new manifest, nothing else.
* **Atomic commits.** An object gets its final name only when complete (temp + fsync + rename
  locally; one put per object on object stores). A manifest is written after every object it
  names, so a visible manifest means a complete directory. A producer killed halfway leaves
  nothing a consumer can see.
* **Verified reads.** Remote downloads are always hashed. Locally, a read-only object of the
  right size is trusted by its content-addressed name (the hard-link fast path would be pointless
  if every read re-hashed); ``verify=True`` re-hashes everything.
* **Zero-copy on a local store.** ``put`` hard-links the file into ``objects/`` and makes the
  inode read-only (so the producer's file becomes read-only too); ``get`` hard-links objects
  into the destination. Materialised files are therefore read-only: an OP that wants to change
  an input in place gets a private copy with ``get(..., link=False)``.
* **Remote cache.** Remote objects are downloaded once per machine into a cache keyed by digest
  (``$DFLOW_ASYNC_CACHE_DIR``, else ``~/.cache/dflow-async/artifacts``) and linked from there.

The store pickles as ``(url, storage_options)`` (plus the cache dir and thread count); workers
reopen the filesystem lazily.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from dflow_async._store_backends import (
    Backend,
    Fetched,
    FsspecBackend,
    LocalBackend,
    ObjectProblem,
    Section,
    Want,
    default_cache_dir,
    key,
    protocol_problem,
)
from dflow_async._store_hash import (
    DIGESTS,
    ChangedError,
    cached_hash,
    default_threads,
    hash_bytes,
    parallel_map,
    stat_key,
    triage_map,
)
from dflow_async._store_local import StrPath, ensure_dir, materialise_file, replace_path
from dflow_async._store_ref import ArtifactRef, check_name
from dflow_async._store_tree import (
    Manifest,
    ManifestFile,
    TreeError,
    manifest_bytes,
    parse_manifest,
    scan_tree,
)
from dflow_async._store_values import VALUE_CODECS, decode_value, encode_value
from dflow_async.exceptions import ArtifactError

__all__ = ["ArtifactRef", "ArtifactStore", "check_url"]

_LOCAL_PROTOCOLS = (None, "file", "local")


class ArtifactStore:
    """Content-addressed artifacts under one fsspec URL. Safe to pickle and share with workers."""

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        hash_threads: int | None = None,
        verify: bool = False,
    ) -> None:
        import fsspec.core

        check_url(str(url))
        protocol = fsspec.core.split_protocol(str(url))[0]
        self.is_local: bool = protocol in _LOCAL_PROTOCOLS
        self._protocol = protocol or "file"
        if self.is_local:  # pin a relative path now: workers may run in another directory
            from fsspec.implementations.local import LocalFileSystem

            path = LocalFileSystem._strip_protocol(str(url))
            url = path if protocol is None else f"file://{path}"
        self.url: str = str(url).rstrip("/") or "/"
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.hash_threads = hash_threads or default_threads()
        #: re-hash every object :meth:`get` materialises, even local ones that pass the cheap
        #: check (see ``is_trusted``): for stores someone else can write to
        self.verify = verify
        self._backend_obj: Backend | None = None

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # Pickle the configuration only; the filesystem is reopened lazily where it is used.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "storage_options": self.storage_options,
            "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
            "hash_threads": self.hash_threads,
            "verify": self.verify,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- public API -----------------------------------------------------------------------

    def check(self) -> None:
        """Fail fast, with a clear ArtifactError, if the store cannot be written and read."""
        backend = self._backend
        try:
            backend.check()
        except FileNotFoundError as exc:
            self._fail_store(f"does not exist (no such bucket or directory: {exc})")
        except PermissionError as exc:
            self._fail_store(f"is not writable ({exc})")
        except Exception as exc:  # network errors come in many library-specific types
            self._fail_store(f"cannot be reached or written ({type(exc).__name__}: {exc})")

    def put(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        producer: str | None = None,
        link: bool = True,
        skip: frozenset[str] = frozenset(),
    ) -> ArtifactRef:
        """Commit a local file or directory; returns its reference. On a local store the
        files become the objects (hard links, made read-only); ``link=False`` copies them
        instead and leaves them as they were (files that are not the library's own).
        ``skip``: names left out at the top of a directory."""
        src = Path(os.path.abspath(path))
        label = check_name(name if name is not None else src.name)
        with self._committing(label, producer):
            try:
                st = os.stat(src)  # a symlink named by the caller is followed: they chose it
            except FileNotFoundError:
                raise TreeError(f"{str(src)!r} does not exist") from None
            if stat.S_ISDIR(st.st_mode):
                return self._put_dir(src, label, producer, link, skip)
            if not stat.S_ISREG(st.st_mode):
                raise TreeError(f"{str(src)!r} is not a regular file or directory")
            if isinstance(self._backend, LocalBackend):
                hexdigest = DIGESTS.get(stat_key(st))
                if hexdigest is None or not self._backend.exists(key("objects", hexdigest)):
                    hexdigest = self._backend.commit(str(src), st, link=link)
            else:
                (hexdigest,) = self._store_objects([(src, st)], self._hash_all([(src, st)]))
            k = key("objects", hexdigest)
            executable = bool(st.st_mode & 0o111)
            return self._ref(k, hexdigest, st.st_size, "file", label, producer, executable)

    def get(
        self,
        ref: ArtifactRef,
        dest_dir: str | os.PathLike[str],
        *,
        verify: bool | None = None,
        link: bool = True,
    ) -> Path:
        """Materialise ``ref`` as ``dest_dir/ref.name`` (replacing anything there) and return
        that path. ``link=False`` gives private writable copies instead of read-only links.
        ``verify`` (default: the store's) re-hashes what the cheap checks would trust."""
        if verify is None:
            verify = self.verify
        dest = Path(dest_dir)
        target = dest / ref.name
        staging = dest / f".{ref.name}.partial-{uuid.uuid4().hex}"
        try:
            ensure_dir(dest)
            if ref.kind == "dir":
                self._get_dir(ref, staging, verify=verify, link=link)
            else:
                k = key(self._section(ref), ref.hexdigest)
                got = self._fetch(ref, [Want(k, ref.hexdigest, ref.size)], verify=verify)
                mode = 0o755 if ref.executable else 0o644
                exe = k in got.executable
                if not materialise_file(got[k], staging, mode=mode, link=link, obj_exec=exe):
                    DIGESTS.put(stat_key(os.stat(staging)), ref.hexdigest)  # a copy
            replace_path(staging, target)
        except ArtifactError:
            raise
        except (OSError, TreeError) as exc:
            self._fail(ref, f"could not be materialised in {str(dest)!r}: {exc}")
        except Exception as exc:  # an unreachable remote store: errors of many library types
            self._unreachable(ref, exc)
        finally:
            _remove(staging)
        return target

    def exists(self, ref: ArtifactRef) -> bool:
        """Whether the object (or, for a directory, its manifest, hence all of it) is stored."""
        return self._backend.exists(key(self._section(ref), ref.hexdigest))

    def missing(self, refs: Sequence[ArtifactRef]) -> list[ArtifactRef]:
        """Those of ``refs`` that :meth:`exists` says are not stored, asked all at once (one
        HEAD each on S3, all in flight together)."""
        keys = {key(self._section(r), r.hexdigest): r for r in refs}
        absent = self._backend.missing(list(keys))
        return [r for k, r in keys.items() if k in absent]

    def put_value(self, value: object, *, producer: str | None = None) -> ArtifactRef:
        """Store a BigParameter: as JSON when JSON gives back exactly the same value, else as a
        pickle. The ref's name says which (``value.json`` / ``value.pickle``)."""
        return self.put_encoded(*encode_value(value), producer=producer)

    def put_encoded(self, data: bytes, label: str, *, producer: str | None = None) -> ArtifactRef:
        """:meth:`put_value` of a value ``encode_value`` made ``(data, label)``."""
        hexdigest = hash_bytes(data)
        k = key("values", hexdigest)
        with self._committing(label, producer):
            if not self._backend.exists(k):
                self._backend.write_bytes(k, data)
        return self._ref(k, hexdigest, len(data), "file", label, producer)

    def get_value(self, ref: ArtifactRef) -> object:
        """The value stored by :meth:`put_value`; its bytes are always verified."""
        codec = VALUE_CODECS.get(ref.name)
        if codec is None or self._section(ref) != "values":
            self._fail(ref, "is not a value stored by put_value")
        try:
            data = self._fetch_one(ref, "values", verify=False).read_bytes()
        except ArtifactError:
            raise
        except Exception as exc:  # an unreachable remote store: errors of many library types
            self._unreachable(ref, exc)
        if hash_bytes(data) != ref.hexdigest:
            self._fail(ref, "is corrupt: its bytes do not match the digest", "re-run the producer")
        return decode_value(data, codec)

    def local_path(self, ref: ArtifactRef) -> Path | None:
        """The stored file itself when the store is local (read it, never write it); None for a
        remote store or a directory (whose files are separate objects: use :meth:`get`)."""
        if not self.is_local or ref.kind == "dir":
            return None
        assert isinstance(self._backend, LocalBackend)
        path = self._backend.dir.path(key(self._section(ref), ref.hexdigest))
        if not path.exists():
            self._fail(ref, "is missing from the store", "re-run the producer")
        return path

    def sweep_tmp(self, older_than: float = 3600.0) -> int:
        """Remove staging files left in ``tmp/`` by producers killed mid-write, if older than
        ``older_than`` seconds (younger ones may belong to a commit in progress). Local stores
        only; on S3, abandoned multipart uploads are best expired by a bucket lifecycle rule.
        Returns how many files were removed."""
        if not isinstance(self._backend, LocalBackend):
            return 0
        return self._backend.sweep_tmp(older_than)

    # -- committing ---------------------------------------------------------------------------

    def _put_dir(
        self, src: Path, label: str, producer: str | None, link: bool, skip: frozenset[str]
    ) -> ArtifactRef:
        tree = scan_tree(src, skip)
        paths = [f.path for f in tree.files]
        backend = self._backend

        def manifest(done: Sequence[Committed]) -> bytes:
            entries = {
                f.rel: ManifestFile(h, st.st_size, _git_mode(st.st_mode))
                for f, (h, st) in zip(tree.files, done, strict=True)
            }
            return manifest_bytes(entries, tree.dirs, tree.links)

        if isinstance(backend, LocalBackend):  # hash and link file by file, on all threads
            done, data = self._commit_local(backend, paths, manifest, link)
        else:  # a request per object is dear: first ask whether the whole tree is there
            stats = [os.stat(p) for p in paths]  # serial: threads only add GIL hand-offs
            files = list(zip(paths, stats, strict=True))
            hashed = self._hash_all(files)
            done = [(h, st) for (h, _), st in zip(hashed, stats, strict=True)]
            data = manifest(done)
            if not backend.exists(key("manifests", hash_bytes(data))):
                done = list(zip(self._store_objects(files, hashed), stats, strict=True))
                data = manifest(done)
        k = key("manifests", hash_bytes(data))
        if not backend.exists(k):  # last: this is what makes the directory visible
            backend.write_bytes(k, data)
        size = sum(st.st_size for _, st in done)
        return self._ref(k, hash_bytes(data), size, "dir", label, producer)

    def _commit_local(
        self,
        backend: LocalBackend,
        paths: Sequence[str],
        manifest: Callable[[Sequence[Committed]], bytes],
        link: bool,
    ) -> tuple[list[Committed], bytes]:
        """Each file's digest and stat, and the manifest; the files the digest cache does not
        know are hashed and linked on all threads while this one stats the rest.

        A digest from the cache may only skip work for an object that is present. The tree's
        manifest, if stored, vouches for every object it names (it is written after them), so a
        pass-through tree costs one existence check, not one per file."""
        hits: list[int] = []

        def cached(i: int) -> tuple[Committed | None, os.stat_result]:
            hexdigest, st = backend.cached(paths[i])
            if hexdigest is None:
                return None, st
            hits.append(i)
            return (hexdigest, st), st

        def commit(i: int, st: os.stat_result) -> Committed:
            return backend.commit(paths[i], st, link=link), st

        done = triage_map(cached, commit, range(len(paths)), self.hash_threads)
        data = manifest(done)
        if hits and not backend.exists(key("manifests", hash_bytes(data))):
            absent = [i for i in hits if not backend.exists(key("objects", done[i][0]))]
            again = parallel_map(lambda i: commit(i, done[i][1]), absent, self.hash_threads)
            for i, c in zip(absent, again, strict=True):
                done[i] = c
            data = manifest(done) if absent else data
        return done, data

    def _hash_all(self, files: Sequence[tuple[StrPath, os.stat_result]]) -> list[tuple[str, bool]]:
        return parallel_map(lambda f: cached_hash(*f), files, self.hash_threads)

    def _store_objects(
        self, files: Sequence[tuple[StrPath, os.stat_result]], hashed: list[tuple[str, bool]]
    ) -> list[str]:
        """Batch version for remote stores: one existence query and one upload for the lot,
        each distinct digest once."""
        while True:
            first: dict[str, int] = {}
            for i, (h, _) in enumerate(hashed):
                first.setdefault(h, i)
            absent = self._backend.missing([key("objects", h) for h in first])
            todo = [h for h in first if key("objects", h) in absent]
            # A digest from the cache may only ever skip work; before it names a new object,
            # the bytes are hashed for real.
            stale = [first[h] for h in todo if hashed[first[h]][1]]
            if not stale:
                break
            for i in stale:
                hashed[i] = cached_hash(*files[i], use_cache=False)
        self._backend.store_files([(*files[first[h]], h) for h in todo])
        return [h for h, _ in hashed]

    @contextlib.contextmanager
    def _committing(self, label: str, producer: str | None) -> Iterator[None]:
        try:
            yield
        except ArtifactError:
            raise
        except ChangedError as exc:
            raise ArtifactError(
                f"artifact {label!r} {_by(producer)} could not be committed to {self.url}: "
                f"{exc.strerror or exc}; something is still writing it (a background process "
                "of the OP?)"
            ) from exc
        except (OSError, TreeError) as exc:
            raise ArtifactError(
                f"artifact {label!r} {_by(producer)} could not be committed to {self.url}: {exc}"
            ) from exc

    # -- fetching -------------------------------------------------------------------------------

    def _get_dir(self, ref: ArtifactRef, staging: Path, *, verify: bool, link: bool) -> None:
        manifest = self._manifest(ref)
        wants = {
            f.hexdigest: Want(key("objects", f.hexdigest), f.hexdigest, f.size)
            for f in manifest.files.values()
        }
        paths = self._fetch(ref, list(wants.values()), verify=verify, manifest=manifest)
        staging.mkdir(mode=0o700)
        for d in manifest.dirs:  # sorted: parents first
            ensure_dir(staging / d)
        base = f"{staging}{os.sep}"
        execs = paths.executable
        jobs = [(base + rel, wants[f.hexdigest].key, f) for rel, f in manifest.files.items()]

        def put_one(job: tuple[str, str, ManifestFile]) -> None:
            dest, k, f = job
            obj, exe = paths[k], k in execs
            try:
                linked = materialise_file(obj, dest, mode=f.mode, link=link, obj_exec=exe)
            except FileNotFoundError:  # a manifest need not list every parent directory
                ensure_dir(os.path.dirname(dest))
                linked = materialise_file(obj, dest, mode=f.mode, link=link, obj_exec=exe)
            if not linked:  # a link shares the object's inode, whose digest lookup recorded
                DIGESTS.put(stat_key(os.stat(dest)), f.hexdigest)

        # Links release the GIL and run in parallel when they go to different directories:
        # each thread takes a run of consecutive (sorted) paths, so mostly its own directories.
        parallel_map(put_one, jobs, self.hash_threads, chunk=-(-len(jobs) // self.hash_threads))
        # Links last, so no file above was written through one; then check where they lead.
        real = os.path.realpath(staging)
        for rel, target in manifest.links.items():
            os.symlink(target, staging / rel)
            if os.path.commonpath([real, os.path.realpath(staging / rel)]) != real:
                self._fail(ref, f"is unsafe: its symlink {rel!r} leads outside the directory")

    def _manifest(self, ref: ArtifactRef) -> Manifest:
        data = self._fetch_one(ref, "manifests", verify=False).read_bytes()
        if hash_bytes(data) != ref.hexdigest:  # small, so always checked
            self._fail(ref, "is corrupt: its manifest does not match the digest")
        try:
            manifest = parse_manifest(data)
        except TreeError as exc:
            self._fail(ref, f"has an invalid manifest: {exc}")
        if manifest.size != ref.size:
            self._fail(ref, f"has a manifest of {manifest.size} bytes, the ref says {ref.size}")
        return manifest

    def _fetch_one(self, ref: ArtifactRef, section: Section, *, verify: bool) -> Path:
        k = key(section, ref.hexdigest)
        size = ref.size
        if section == "manifests":  # the ref's size is the tree's, not the manifest's: hash it
            size, verify = 0, True
        return Path(self._fetch(ref, [Want(k, ref.hexdigest, size)], verify=verify)[k])

    def _fetch(
        self,
        ref: ArtifactRef,
        wants: Sequence[Want],
        *,
        verify: bool,
        manifest: Manifest | None = None,
    ) -> Fetched:
        try:
            return self._backend.fetch(wants, verify=verify)
        except ObjectProblem as problem:
            what = _describe(problem, manifest)
            hint = "re-run the producer (the store was damaged or cleaned)"
            # so that re-running the producer does repair the store. A directory missing some
            # objects loses its manifest too: a stored manifest vouches for every object it
            # names, so its producer's commit found it and uploaded nothing, again and again
            if problem.corrupt or (problem.missing and ref.kind == "dir"):
                self._discard(ref, problem.corrupt)
            self._fail(ref, what, hint)
        except OSError as exc:
            self._fail(ref, f"could not be fetched ({type(exc).__name__}: {exc})")

    def _discard(self, ref: ArtifactRef, keys: Sequence[str]) -> None:
        """Remove damaged objects, and the manifest of a directory holding them: a commit
        trusts what is stored under a digest, and a stored manifest vouches for its objects."""
        if ref.kind == "dir":
            keys = [*keys, key("manifests", ref.hexdigest)]
        with contextlib.suppress(Exception):  # best effort: the failure is reported anyway
            self._backend.discard(keys)

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def _backend(self) -> Backend:
        if self._backend_obj is None:
            self._backend_obj = self._open_backend()
        return self._backend_obj

    def _open_backend(self) -> Backend:
        if self.is_local:
            root = Path(self.url.removeprefix("file://"))
            return LocalBackend(root, self.hash_threads)
        problem = protocol_problem(self.url)
        if problem:
            self._fail_store(problem)
        cache = self.cache_dir or default_cache_dir()
        return FsspecBackend(
            self.url, self.storage_options, self._protocol, cache, self.hash_threads
        )

    def _section(self, ref: ArtifactRef) -> Section:
        if ref.kind == "dir":
            return "manifests"
        h = ref.hexdigest
        return "values" if ref.uri.endswith(f"values/{h[:2]}/{h}") else "objects"

    def _ref(
        self,
        k: str,
        hexdigest: str,
        size: int,
        kind: Literal["file", "dir"],
        name: str,
        producer: str | None,
        executable: bool = False,
    ) -> ArtifactRef:
        return ArtifactRef(
            uri=f"{self.url.rstrip('/')}/{k}",
            digest=f"sha256:{hexdigest}",
            size=size,
            kind=kind,
            name=name,
            producer=producer,
            executable=executable,
        )

    def _fail(self, ref: ArtifactRef, problem: str, hint: str = "") -> NoReturn:
        tail = f"; {hint}" if hint else ""
        raise ArtifactError(
            f"artifact {ref.name!r} {_by(ref.producer)} at {ref.uri} {problem}{tail}"
        )

    def _unreachable(self, ref: ArtifactRef, exc: Exception) -> NoReturn:
        # an ArtifactError, so that a consumer fails as an infra failure (retried) naming the
        # artifact, not as a user error with the transport's bare message
        self._fail(
            ref,
            f"could not be read from the store ({type(exc).__name__}: {exc})",
            "check that the store is reachable",
        )

    def _fail_store(self, problem: str) -> NoReturn:
        raise ArtifactError(f"artifact store {self.url} {problem}")


def check_url(url: str) -> None:
    """Raises ArtifactError for a URL fsspec would take for something else than what it
    says: ``s3://`` (no bucket: with its trailing slashes stripped, "s3:" was a local
    directory, as "memory:" was for ``memory://``), and ``s3:/bucket/p`` or ``s3:bucket/p``
    (a slash short: fsspec sees a protocol only before "://", so these were local directories
    named "s3:", and a run wrote its artifacts there and succeeded)."""
    import fsspec.core
    from fsspec.registry import known_implementations, registry

    protocol, rest = fsspec.core.split_protocol(url)
    if protocol is not None:
        if protocol not in _LOCAL_PROTOCOLS and not rest.strip("/"):
            raise ArtifactError(
                f"artifact store {url!r} names no location: give one, as in "
                f"{protocol}://bucket/prefix"
            )
        return
    head, sep, tail = url.partition(":")
    known = set(known_implementations) | set(registry)
    if sep and "/" not in head and head in known - set(_LOCAL_PROTOCOLS):
        raise ArtifactError(
            f"artifact store {url!r} is not a {head} URL, which needs '://': did you mean "
            f"{head}://{tail.lstrip('/')}? (A local directory of that name is ./{url})"
        )


Committed = tuple[str, os.stat_result]  # a file as committed: (hex digest, stat when hashed)


def _git_mode(mode: int) -> int:
    """Only "executable or not" is recorded, as git does: committing a file makes it read-only,
    and the same tree must keep the same digest when it is committed again (a pass-through)."""
    return 0o755 if mode & 0o111 else 0o644


def _by(producer: str | None) -> str:
    return f"(produced by step {producer!r})" if producer else "(producer unknown)"


def _describe(problem: ObjectProblem, manifest: Manifest | None) -> str:
    """Name the files of a directory behind the object keys a backend complained about."""

    def files(keys: list[str]) -> str:
        if manifest is None:
            return ""
        hexes = {k.rsplit("/", 1)[-1] for k in keys}
        rels = sorted(r for r, f in manifest.files.items() if f.hexdigest in hexes)
        more = f" and {len(rels) - 5} more" if len(rels) > 5 else ""
        return " (files: " + ", ".join(repr(r) for r in rels[:5]) + more + ")"

    parts = []
    if problem.missing:
        parts.append(
            f"is missing {len(problem.missing)} object(s) from the store{files(problem.missing)}"
        )
    if problem.corrupt:
        parts.append(
            f"is corrupt: {len(problem.corrupt)} object(s) do not match their digest"
            f"{files(problem.corrupt)}"
        )
    return " and ".join(parts)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
