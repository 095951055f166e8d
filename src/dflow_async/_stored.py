"""Artifacts between steps: committed to the store by the producer's worker, materialised by
the consumer's worker, and seen by users as paths that also carry their store reference."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PosixPath
from typing import TYPE_CHECKING, Any

from dflow_async._op import artifact_leaves
from dflow_async._store import ArtifactStore
from dflow_async._store_local import ensure_dir
from dflow_async._store_ref import ArtifactRef
from dflow_async._store_values import encode_value
from dflow_async.exceptions import ArtifactError

if TYPE_CHECKING:
    from dflow_async._records import StepRecord

__all__ = [
    "BigValue",
    "InputFetchError",
    "StoredPath",
    "big_values",
    "commit",
    "holds_big",
    "materialise",
    "with_values",
]


class StoredPath(PosixPath):
    """A path to an artifact that also knows its reference in the artifact store.

    It is a ``Path`` (open it, list it, read it where it was produced), and ``.ref`` lets any
    worker — on this machine or another — fetch the same bytes from the store, verified.
    """

    ref: ArtifactRef | None = None  # paths derived from it (p / "x", p.parent) carry none

    def __new__(cls, path: str | os.PathLike[str], ref: ArtifactRef | None = None) -> StoredPath:
        obj = super().__new__(cls, path)
        obj.ref = ref
        return obj

    def __reduce__(self) -> Any:
        return (_stored_path, (str(self), self.ref))


def _stored_path(path: str, ref: ArtifactRef | None) -> StoredPath:
    return StoredPath(path, ref)


class InputFetchError(ArtifactError):
    """An input artifact could not be fetched or failed verification: an infra failure."""


class StoreUnreachableError(InputFetchError):
    """The store failed a request while an attempt's outputs were committed (it went away, a
    network error): an infra failure, retried like an input it could not give, not an error
    of the OP's (which botocore's bare exception types made it, never retried)."""


@contextmanager
def _committing_to(store: ArtifactStore, name: str, producer: str) -> Iterator[None]:
    try:
        yield
    except ArtifactError:  # the store's own account (a file that changed, an unsafe tree...)
        raise
    except Exception as exc:  # a transport's error types: botocore's, aiohttp's...
        raise StoreUnreachableError(
            f"artifact {name!r} (produced by step {producer!r}) could not be committed to "
            f"the store {store.url} ({type(exc).__name__}: {exc}); check that the store is "
            "reachable"
        ) from None


def materialise(value: Any, store: ArtifactStore | None, dest: Path) -> Any:
    """Input artifact values as local paths, fetched from the store into ``dest``.

    Each leaf gets its own directory (``dest/<i>`` or ``dest/<key>``) so the same file name in
    two elements of a list cannot collide. Plain paths (not from the store) pass through,
    and so does ``None`` (a failed slice's hole in a stacked list).
    """
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: materialise(v, store, dest / _safe(str(k))) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [materialise(v, store, dest / str(i)) for i, v in enumerate(value)]
    ref = getattr(value, "ref", None)
    if ref is None or store is None:
        return Path(value)
    try:
        return store.get(ref, dest)
    except ArtifactError as exc:
        if _adopt_from_home(ref, store, dest, exc):
            return store.get(ref, dest)
        raise InputFetchError(str(exc)) from None


def home_store(ref: ArtifactRef) -> ArtifactStore | None:
    """The store a reference was committed to, read off its URL (``<store>/objects/..``,
    ``<store>/manifests/..``, ``<store>/values/..``); None if the URL does not say. Remote
    credentials come from the environment, as fsspec reads them."""
    h = ref.hexdigest
    for section, suffix in (("objects", ""), ("manifests", ".json"), ("values", "")):
        tail = f"/{section}/{h[:2]}/{h}{suffix}"
        if ref.uri.endswith(tail):
            return ArtifactStore(ref.uri[: -len(tail)])
    return None


def _other_home(ref: ArtifactRef, store: ArtifactStore) -> ArtifactStore | None:
    """The store ``ref`` was committed to when that is not ``store`` and ``store`` lacks it
    (a record of a run on another store, given to ``reuse_step=``): else None, also when a
    store cannot even be asked (the caller then reports its first error)."""
    try:
        home = home_store(ref)
        if home is None or home.url == store.url or store.exists(ref):
            return None
    except Exception:  # network errors come in many types
        return None
    return home


def _adopt_from_home(ref: ArtifactRef, store: ArtifactStore, dest: Path, exc: Exception) -> bool:
    """After ``store.get(ref)`` failed: when the artifact was committed to another store,
    put it into ``store`` from there (content addressing keeps ``ref`` valid) and say True.
    Raises InputFetchError naming both stores if that store cannot give it."""
    home = _other_home(ref, store)
    if home is None:
        return False
    staging = dest.parent / f".{dest.name}.adopt-{uuid.uuid4().hex}"
    try:
        got = home.get(ref, staging, verify=True, link=False)
        again = store.put(got, name=ref.name, producer=ref.producer, link=False)
        if again.digest != ref.digest:
            raise ArtifactError(f"its bytes in {home.url!r} do not match the digest")
    except Exception as err:  # network errors come in many types
        raise InputFetchError(
            f"artifact {ref.name!r} (from step {ref.producer!r}) was committed to the store "
            f"{home.url!r}, not to this workflow's store {store.url!r} (a reuse_step record "
            f"of a run on another store?), and could not be taken from there: {err}"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def commit(value: Any, store: ArtifactStore | None, producer: str, workdir: str) -> Any:
    """Output artifact paths committed to the store; returns StoredPaths in the same shape.

    Only what the attempt wrote, under its ``workdir``, becomes the stored object itself
    (hard-linked into a local store, made read-only). Any other path is an input the OP
    passed through (a user's own file, given as a plain path): it is copied into the work
    dir first (``.passed/``), and the copy is what is stored and recorded. Linking the user's
    file would have made it the stored object, changed under its digest by the next edit; and
    recorded as it was, its next edit would have changed what ``download_artifact`` gives. An
    input that came from the store is under ``workdir/.inputs``, already stored: committing it
    copies no bytes."""
    if store is None or value is None:
        return value
    return _commit(value, store, producer, os.path.realpath(workdir) + os.sep)


def _commit(value: Any, store: ArtifactStore, producer: str, own: str) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _commit(v, store, producer, own) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_commit(v, store, producer, own) for v in value]
    if isinstance(value, StoredPath) and value.ref is not None:
        return value
    real = os.path.realpath(value) + os.sep
    if not real.startswith(own):
        value = _snapshot(Path(value), own)
    # the work dir itself (an OP returned Path(".")): not the inputs it was given, nor copies
    skip = _OWN_DIRS if real == own else frozenset()
    with _committing_to(store, Path(value).name, producer):
        ref = store.put(value, producer=producer, skip=skip)
    return StoredPath(value, ref)


#: what the library puts in an attempt's work dir: fetched inputs, passed-through copies
_OWN_DIRS = frozenset({".inputs", ".passed"})


def _snapshot(path: Path, own: str) -> Path:
    """A copy of ``path`` (a file or a directory, not the attempt's) in the work dir ``own``."""
    dest = Path(own, ".passed", uuid.uuid4().hex[:12], path.name or "root")
    ensure_dir(dest.parent)
    if path.is_dir():
        shutil.copytree(path, dest, symlinks=True)
    else:
        shutil.copy2(path, dest)
    return dest


#: a directory with more entries than this is stamped by its own mtime only
_STAMP_ENTRIES = 10_000


def local_inputs_stamp(root: Any) -> dict[str, str]:
    """Size and mtime of every local file (or directory tree) given to the compiled workflow
    ``root`` as an artifact input, by path: a run's journal keeps it, so that a resume can
    say which inputs were edited since the run began (steps not yet run would read them)."""
    stamps: dict[str, str] = {}
    for _, leaf in literal_artifacts(root):
        if getattr(leaf, "ref", None) is None and isinstance(leaf, str | os.PathLike):
            path = os.fspath(leaf)
            if path not in stamps:
                stamps[path] = _stamp(path)
    return stamps


def literal_artifacts(root: Any) -> Iterator[tuple[str, Any]]:
    """Every literal artifact input of the compiled workflow ``root``, as ``(where, leaf)``:
    each path (or StoredPath) a step is given as it stands in the workflow's definition."""
    from dflow_async._compile import walk_templates

    # steps of one OP share their ports' dict: ask once per OP whether it takes artifacts
    takes_artifacts: dict[int, bool] = {}
    for ct in walk_templates(root):
        for node in ct.nodes:
            ports = node.inputs
            takes = takes_artifacts.get(id(ports))
            if takes is None:
                takes = any(i.kind == "artifacts" for i in ports.values())
                takes_artifacts[id(ports)] = takes
            if not takes:
                continue
            for port, value in node.const_inputs.items():
                info = ports.get(port)
                if info is not None and info.kind == "artifacts":
                    where = f"step {ct.name}.{node.name}: input artifact {port!r}"
                    for leaf in artifact_leaves(value):
                        yield where, leaf


def _stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    if not os.path.isdir(path):
        return f"{st.st_size}:{st.st_mtime_ns}"
    parts = [f"{st.st_mtime_ns}"]
    for n, (top, dirs, files) in enumerate(os.walk(path)):
        for name in [*dirs, *files]:
            if len(parts) > _STAMP_ENTRIES:
                return parts[0]
            try:
                entry = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            parts.append(f"{n}/{name}:{entry.st_size}:{entry.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def edited_inputs(recorded: dict[str, str]) -> list[str]:
    """The paths among ``recorded`` (see local_inputs_stamp) that differ now."""
    return sorted(path for path, stamp in recorded.items() if _stamp(path) != stamp)


def adopt_inputs(root: Any, store: ArtifactStore) -> list[str]:
    """Literal artifact inputs that were committed to another store (``upload_artifact``
    without ``store=``, or another workflow's output) are put into ``store`` from their local
    files before the run: content addressing makes their references resolve there as they
    are. Returns a problem per input that cannot be adopted."""
    problems: list[str] = []
    seen: set[str] = set()
    for where, leaf in literal_artifacts(root):
        ref = getattr(leaf, "ref", None)
        if ref is None or ref.digest in seen or store.exists(ref):
            continue
        seen.add(ref.digest)
        if not os.path.lexists(leaf):
            problems.append(
                f"{where} ({ref.name!r} from {ref.producer}) is not in the store "
                f"{store.url!r}, and {str(leaf)!r} no longer exists here; upload it "
                "with upload_artifact(..., store=<this workflow's store>)"
            )
            continue
        try:
            again = store.put(leaf, producer=ref.producer, link=False)
        except ArtifactError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if again.digest != ref.digest:
            problems.append(
                f"{where}: {str(leaf)!r} changed after it was uploaded, and the "
                f"store {store.url!r} does not hold the uploaded version; upload "
                "it again"
            )
    return problems


def stored_refs(value: Any) -> Iterator[ArtifactRef]:
    """The store references ``value`` holds, at any depth of lists, tuples and dicts: its
    artifacts' (StoredPath) and its BigParameters' (BigValue)."""
    if isinstance(value, BigValue):
        yield value.ref
    elif isinstance(value, StoredPath):
        if value.ref is not None:
            yield value.ref
    elif isinstance(value, list | tuple):
        for v in value:
            yield from stored_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from stored_refs(v)


def lost_digests(values: Iterable[Any], store: ArtifactStore) -> set[str]:
    """Digests of the objects ``values`` refer to that ``store`` does not hold (a bucket
    emptied, a server that restarted without its data, a store cleaned by hand), asked all at
    once. A record or cache entry naming one of them vouches for outputs no consumer can
    fetch: its step has to run again."""
    refs = {r.digest: r for v in values for r in stored_refs(v)}
    if not refs:
        return set()
    return {r.digest for r in store.missing(list(refs.values()))}


def forget_lost(
    records: Sequence[StepRecord], units: dict[str, dict[int, list[Any]]], store: ArtifactStore
) -> list[str]:
    """On resume: what an earlier driver finished, less what the store lost since. A
    succeeded record whose outputs name objects the store no longer holds is marked Failed
    (so the resume runs its step again, its attempts so far still counted), and so is a
    fan-out's finished unit (dropped from ``units``): kept, they would hand their consumers
    references nothing can fetch, failing them on every resume. Returns the paths of the steps
    that run again."""
    done = [r for r in records if r.phase == "Succeeded"]

    def outputs(r: StepRecord) -> list[Any]:
        return [*r.outputs.raw_parameters.values(), *r.outputs.artifacts.values()]

    finished = [u for by_unit in units.values() for u in by_unit.values()]
    lost = lost_digests([*(v for r in done for v in outputs(r)), *finished], store)
    if not lost:
        return []
    again: list[str] = []
    for r in done:
        if _names_lost(outputs(r), lost):
            r.phase = "Failed"
            again.append(r.path)
    for path, by_unit in units.items():
        for unit in [n for n, out in by_unit.items() if _names_lost(out, lost)]:
            del by_unit[unit]
            again.append(f"{path} (unit {unit})")
    return again


def _names_lost(value: Any, lost: set[str]) -> bool:
    return any(ref.digest in lost for ref in stored_refs(value))


def _safe(key: str) -> str:
    # dict keys become directory names: keep them to one plain component
    cleaned = key.replace("/", "_").replace("\0", "_")
    return cleaned if cleaned not in ("", ".", "..") else f"_{cleaned}"


class BigValue:
    """A ``BigParameter`` output: kept in the artifact store, passed between steps (and kept
    in the journal) as a reference; workers load it for the OPs that take it."""

    __slots__ = ("_value", "ref", "store")

    def __init__(self, ref: ArtifactRef, store: ArtifactStore | None = None) -> None:
        global any_big
        any_big = True
        self.ref = ref
        self.store = store
        self._value: Any = _UNLOADED

    @property
    def value(self) -> Any:
        if self._value is _UNLOADED:
            if self.store is None:
                raise ArtifactError(
                    f"BigParameter {self.ref.name!r} from {self.ref.producer!r} is in the store "
                    f"{self.ref.uri!r}: load it with .load(store)"
                )
            self._value = self.store.get_value(self.ref)
        return self._value

    def load(self, store: ArtifactStore) -> Any:
        self.store = store
        return self.value

    def __reduce__(self) -> Any:
        return (BigValue, (self.ref, self.store))  # never the value: that is the point

    def __repr__(self) -> str:
        return f"<BigValue {self.ref.digest[:19]}… from {self.ref.producer!r}>"


_UNLOADED = object()

#: whether this process ever made a BigValue (stored one, decoded one from a journal, or
#: unpickled one: all go through ``__init__``). Until then no value can hold one, and the
#: workers skip looking inside the lists and dicts of their inputs for them.
any_big = False


def holds_big(value: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> bool:
    """Whether a list, tuple or dict holds a BigValue, at any depth: a fan-out stacks its
    slices' BigParameter outputs into a list (a fan-out of fan-outs, into lists of lists),
    and a literal list or dict of references holds the values they name."""
    for v in value.values() if type(value) is dict else value:
        t = type(v)
        if t is BigValue or ((t is list or t is dict or t is tuple) and holds_big(v)):
            return True
    return False


def big_values(value: Any) -> Iterator[BigValue]:
    """The BigValues ``value`` is or holds, at any depth of lists, tuples and dicts."""
    t = type(value)
    if t is BigValue:
        yield value
    elif t is list or t is dict or t is tuple:
        for v in value.values() if t is dict else value:
            t = type(v)
            if t is BigValue:
                yield v
            elif t is list or t is dict or t is tuple:
                yield from big_values(v)


def with_values(value: Any, load: Callable[[BigValue], Any]) -> Any:
    """``value`` with every BigValue in it, at any depth of lists, tuples and dicts, replaced
    by ``load(it)``. Containers are new ones: the given ones may be another step's recorded
    outputs, which must keep their references."""
    t = type(value)
    if t is BigValue:
        return load(value)
    if t is list:
        return [with_values(v, load) for v in value]
    if t is tuple:
        return tuple(with_values(v, load) for v in value)
    if t is dict:
        return {k: with_values(v, load) for k, v in value.items()}
    return value


def store_big(
    values: dict[str, Any], names: tuple[str, ...], store: ArtifactStore, step: str
) -> None:
    for name in names:
        if name in values and not isinstance(values[name], BigValue):
            data, label = encode_value(values[name])  # its errors are the OP's value's
            with _committing_to(store, name, step):
                values[name] = BigValue(store.put_encoded(data, label, producer=step), store)


def load_big(inputs: dict[str, Any], store: ArtifactStore | None) -> dict[str, Any]:
    """Inputs with every BigValue replaced by its value (whatever port takes it), also those
    in lists and dicts (a fan-out's stacked outputs). Raises InputFetchError naming the
    input that could not be loaded."""
    loaded = dict(inputs)

    def load(big: BigValue) -> Any:
        if big.store is None:
            big.store = store
        return _kept_value(big)

    for name, value in inputs.items():
        t = type(value)
        if t is BigValue or ((t is list or t is dict or t is tuple) and holds_big(value)):
            try:
                loaded[name] = with_values(value, load)
            except InputFetchError as exc:
                raise InputFetchError(
                    f"could not load the input {name!r}, a BigParameter, from the store: {exc}"
                ) from None
    return loaded


def _kept_value(big: BigValue) -> Any:
    # kept in ``big``: the worker's copy (the scheduler's own under the inline executor)
    try:
        return big.value
    except ArtifactError as exc:
        return _value_from_home(big, big.store, exc)


def read_big(big: BigValue, store: ArtifactStore | None) -> Any:
    """``big``'s value read from ``store`` (else from its own), without keeping it in ``big``:
    the scheduler computes with a value once per step, and the BigValues it holds must not
    keep every BigParameter of a run in its memory. Raises InputFetchError."""
    if big._value is not _UNLOADED:  # loaded already (by a worker in this process)
        return big._value
    if store is None:
        store = big.store
    if store is None:
        raise InputFetchError(f"no artifact store to read it from ({big.ref.uri!r})")
    try:
        return store.get_value(big.ref)
    except ArtifactError as exc:
        return _value_from_home(big, store, exc)


def _value_from_home(big: BigValue, store: ArtifactStore | None, exc: ArtifactError) -> Any:
    """A BigParameter missing from the workflow's store, read from the store it was put in
    (a reused record of a run on another store); else InputFetchError with the first error."""
    home = None if store is None else _other_home(big.ref, store)
    if home is None:
        raise InputFetchError(str(exc)) from None
    try:
        return home.get_value(big.ref)
    except Exception as err:  # network errors come in many types
        raise InputFetchError(
            f"BigParameter {big.ref.name!r} (from step {big.ref.producer!r}) was stored in "
            f"{home.url!r}, not in this workflow's store {store.url if store else None!r}, "
            f"and could not be read from there: {err}"
        ) from None
