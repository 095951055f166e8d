"""The content-addressed artifact store, on real storage: a local directory, fsspec's memory://,
and a real S3-compatible server (moto's server mode) spoken to through s3fs, as users do."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dflow_async._store import ArtifactRef, ArtifactStore
from dflow_async._store_hash import DIGESTS, stat_key
from dflow_async.exceptions import ArtifactError

SRC = Path(__file__).resolve().parents[1] / "src"
BUCKET = "dflow-async-test"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


# -- fixtures -------------------------------------------------------------------------------


class RequestLog(logging.Handler):
    """Every request the moto server answered, as "METHOD /path", read from its access log."""

    LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)?([A-Z]+) (\S+)')

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if m := self.LINE.search(record.getMessage()):
            self.lines.append(f"{m[1]} {m[2]}")

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for line in self.lines if line.startswith(f"{method} /{prefix}"))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[tuple[str, RequestLog]]:
    """A moto S3 server on loopback for the whole session, with one bucket and a request log."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    log = RequestLog()
    access_log = logging.getLogger("werkzeug")  # the server's per-request log
    saved = access_log.level, access_log.propagate
    access_log.addHandler(log)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False  # counted, not printed
    with pytest.MonkeyPatch.context() as mp:
        for k, v in S3_ENV.items():  # dummy credentials: never reach a real account
            mp.setenv(k, v)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        _s3fs(endpoint).mkdir(BUCKET)
        try:
            yield endpoint, log
        finally:
            server.stop()
            access_log.removeHandler(log)
            access_log.setLevel(saved[0])
            access_log.propagate = saved[1]


@pytest.fixture
def s3_endpoint(s3_server: tuple[str, RequestLog]) -> str:
    return s3_server[0]


def _s3_options(endpoint: str) -> dict[str, Any]:
    return {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}


def _s3fs(endpoint: str) -> Any:
    import s3fs

    # Our own instance, so listings made by the test never sit in the store's s3fs dircache.
    return s3fs.S3FileSystem(skip_instance_cache=True, **_s3_options(endpoint))


@dataclass
class Case:
    """One kind of storage under test, plus raw access to it for inspecting and damaging."""

    kind: str  # "local" | "memory" | "s3"
    url: str
    options: dict[str, Any]
    root: str  # the store root as a path of ``fs``
    fs: Any  # fsspec filesystem for raw access (bypasses the store)
    log: RequestLog | None = None  # S3 only: what the server was asked

    def requests(self, method: str, section: str = "") -> int:
        assert self.log is not None
        return self.log.count(method, f"{self.root}/{section}")

    def store(self, cache: Path) -> ArtifactStore:
        return ArtifactStore(self.url, self.options, cache_dir=cache)

    def keys(self, section: str) -> list[str]:
        base = f"{self.root}/{section}"
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache()
        if not self.fs.exists(base):
            return []
        return sorted(p[len(self.root) + 1 :] for p in self.fs.find(base))

    def raw(self, uri: str) -> str:
        """The fs path of a store URI."""
        assert uri.startswith(self.url + "/"), (uri, self.url)
        return f"{self.root}/{uri[len(self.url) + 1 :]}"

    def overwrite(self, uri: str, data: bytes) -> None:
        path = self.raw(uri)
        if self.kind == "local":
            os.chmod(path, 0o644)
            Path(path).write_bytes(data)
            os.chmod(path, 0o444)  # read-only again: the cheap check alone cannot notice
        else:
            self.fs.pipe_file(path, data)

    def delete(self, uri: str) -> None:
        self.fs.rm_file(self.raw(uri))


@pytest.fixture(params=["local", "memory", "s3"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    import fsspec

    tag = uuid.uuid4().hex[:12]
    if request.param == "local":
        root = str(tmp_path / "store")
        yield Case("local", root, {}, root, fsspec.filesystem("file"))
        return
    if request.param == "memory":
        fs = fsspec.filesystem("memory")
        c = Case("memory", f"memory://dflow-test-{tag}", {}, f"/dflow-test-{tag}", fs)
    else:
        endpoint, log = request.getfixturevalue("s3_server")
        fs = _s3fs(endpoint)
        url, options = f"s3://{BUCKET}/{tag}", _s3_options(endpoint)
        c = Case("s3", url, options, f"{BUCKET}/{tag}", fs, log)
    try:
        yield c
    finally:
        if fs.exists(c.root):
            fs.rm(c.root, recursive=True)


@pytest.fixture
def store(case: Case, tmp_path: Path) -> ArtifactStore:
    s = case.store(tmp_path / "cache")
    s.check()
    return s


def _tree(root: Path) -> Path:
    """A small nested tree with an empty directory, an executable and an inside symlink."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty" / "deeper").mkdir(parents=True)
    (root / "top.txt").write_text("top\n")
    (root / "a" / "one.bin").write_bytes(os.urandom(3000))
    (root / "a" / "b" / "two.txt").write_text("two\n" * 100)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "latest").symlink_to("a/b/two.txt")
    return root


def _snapshot(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = (p.read_bytes(), bool(p.stat().st_mode & 0o111))
    return out


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- round trips ----------------------------------------------------------------------------


def test_file_round_trip(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    (tmp_path / "in.dat").write_bytes(data)
    ref = store.put(tmp_path / "in.dat", producer="wf/produce")
    assert (ref.kind, ref.name, ref.size, ref.digest) == ("file", "in.dat", len(data), _sha(data))
    assert ref.uri.startswith(case.url + "/objects/") and ref.producer == "wf/produce"
    assert store.exists(ref)
    assert ArtifactRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref

    got = store.get(ref, tmp_path / "out")
    assert got == tmp_path / "out" / "in.dat" and got.read_bytes() == data
    # a store reopened elsewhere from its pickle reads the same artifact
    again = pickle.loads(pickle.dumps(store)).get(ref, tmp_path / "out2")
    assert again.read_bytes() == data


def test_directory_round_trip(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "results")
    expected = _snapshot(src)
    ref = store.put(src, producer="wf/sim")
    assert ref.kind == "dir" and ref.name == "results"
    assert ref.uri.startswith(case.url + "/manifests/") and ref.uri.endswith(".json")
    assert ref.size == sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()
    )

    got = store.get(ref, tmp_path / "work")
    assert got == tmp_path / "work" / "results"
    assert _snapshot(got) == expected  # nested files, empty dirs, exec bit, the inside link
    assert (got / "empty" / "deeper").is_dir()

    # the manifest is JSON: relative path -> {digest, size, mode}
    manifest = json.loads(case.fs.cat_file(case.raw(ref.uri)))
    assert manifest["files"]["a/b/two.txt"] == {
        "digest": _sha(b"two\n" * 100),
        "size": 400,
        "mode": 0o644,
    }
    assert manifest["files"]["run.sh"]["mode"] == 0o755
    assert "empty/deeper" in manifest["dirs"] and manifest["links"] == {"latest": "a/b/two.txt"}

    # getting again replaces what is there, it does not merge into it
    (got / "stray.txt").write_text("x")
    assert _snapshot(store.get(ref, tmp_path / "work")) == expected


def test_private_copies_are_writable(store: ArtifactStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "d")
    ref = store.put(src)
    got = store.get(ref, tmp_path / "w", link=False)
    (got / "top.txt").write_text("changed")  # does not touch the stored object
    assert store.get(ref, tmp_path / "w2", verify=True).joinpath("top.txt").read_text() == "top\n"


# -- dedupe -----------------------------------------------------------------------------------


def test_same_content_is_stored_once(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(5000)
    for name in ("a.bin", "b.bin"):
        (tmp_path / name).write_bytes(data)
    r1 = store.put(tmp_path / "a.bin")
    r2 = store.put(tmp_path / "b.bin", name="renamed.bin")
    assert r1.digest == r2.digest and r2.name == "renamed.bin"
    assert len(case.keys("objects")) == 1

    d = tmp_path / "dir"
    d.mkdir()
    for i in range(4):
        (d / f"copy{i}.bin").write_bytes(data)
    store.put(d)
    assert len(case.keys("objects")) == 1  # four equal files, still one object


def test_changed_file_uploads_only_itself(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    for i in range(6):
        (d / f"f{i}.bin").write_bytes(os.urandom(2000 + i))
    first = store.put(d)
    objects = case.keys("objects")
    assert len(objects) == 6 and len(case.keys("manifests")) == 1
    if case.kind == "s3":
        assert case.requests("PUT", "objects") == 6
    before = {k: _version(case, k) for k in objects}

    os.chmod(d / "f3.bin", 0o644)  # a local commit made it read-only
    (d / "f3.bin").write_bytes(b"new content")
    second = store.put(d)
    assert second.digest != first.digest
    assert len(case.keys("objects")) == 7 and len(case.keys("manifests")) == 2
    # the five unchanged objects were not written again
    assert {k: _version(case, k) for k in objects if k in before} == before
    if case.kind == "s3":
        assert case.requests("PUT", "objects") == 7 and case.requests("PUT", "manifests") == 2

    # committing the same tree again writes nothing new at all
    assert store.put(d) == second
    assert len(case.keys("objects")) == 7 and len(case.keys("manifests")) == 2
    if case.kind == "s3":
        assert case.requests("PUT", "objects") == 7 and case.requests("PUT", "manifests") == 2


def _version(case: Case, k: str) -> Any:
    """Something that changes when an object is written again."""
    if case.kind == "local":
        return os.stat(f"{case.root}/{k}").st_ino
    info = case.fs.info(f"{case.root}/{k}")
    return info.get("created") or info.get("LastModified")  # memory: created; s3: server time


# -- atomicity --------------------------------------------------------------------------------


_PRODUCER = textwrap.dedent(
    """
    import json, sys
    from dflow_async._store import ArtifactStore
    url, options, cache, src = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    ArtifactStore(url, options, cache_dir=cache).put(src, producer="wf/killed")
    print("FINISHED", flush=True)
    """
)


@pytest.mark.parametrize("case", ["local", "s3"], indirect=True)
def test_killed_producer_leaves_nothing_visible(
    case: Case, store: ArtifactStore, tmp_path: Path
) -> None:
    if case.kind == "local":
        # Another filesystem forces the byte-copy path (a hard link is instantaneous).
        shm = Path("/dev/shm")
        if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("needs /dev/shm on another filesystem to force the copy path")
        src_dir = shm / f"dflow-test-{uuid.uuid4().hex}"
        size = 384 << 20
    else:
        src_dir = tmp_path / "big"
        size = 160 << 20  # > 2 x 50 MiB: s3fs uses a multipart upload
    src_dir.mkdir()
    src = src_dir / "big.bin"
    try:
        _write_random(src, size)
        digest = "sha256:" + _hash_path(src)
        env = {**os.environ, **S3_ENV, "PYTHONPATH": str(SRC)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PRODUCER,
                case.url,
                json.dumps(case.options),
                str(tmp_path / "producer-cache"),
                str(src),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_until_mid_upload(case, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        assert b"FINISHED" not in out
    finally:
        for p in src_dir.iterdir():
            p.unlink()
        src_dir.rmdir()

    assert case.keys("objects") == [] and case.keys("manifests") == []
    would_be = ArtifactRef(
        uri=f"{case.url}/objects/{digest[7:9]}/{digest[7:]}",
        digest=digest,
        size=size,
        kind="file",
        name="big.bin",
        producer="wf/killed",
    )
    assert not store.exists(would_be)
    with pytest.raises(ArtifactError, match=r"'big.bin'.*wf/killed.*missing"):
        store.get(would_be, tmp_path / "consumer")
    assert not (tmp_path / "consumer" / "big.bin").exists()
    if case.kind == "local":  # the killed producer's staging file is garbage, swept later
        assert list(Path(case.root, "tmp").iterdir())
        assert store.sweep_tmp(older_than=0) >= 1
        assert not list(Path(case.root, "tmp").iterdir())


def _wait_until_mid_upload(case: Case, proc: subprocess.Popen[bytes]) -> None:
    """Return once the producer has started writing bytes under a temporary name."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if case.kind == "local":
            parts = list(Path(case.root, "tmp").glob("*.part"))
            if any(p.stat().st_size > 0 for p in parts if p.exists()):
                return
        else:
            uploads = case.fs.call_s3("list_multipart_uploads", Bucket=BUCKET)
            if uploads.get("Uploads"):
                return
        time.sleep(0.002)
    raise AssertionError("the producer never started uploading")


def _write_random(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for i in range(size >> 20):
            fh.write(block[i % 7 :] + block[: i % 7])  # distinct MiBs, cheap to make


def _hash_path(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# -- verification ------------------------------------------------------------------------------


def test_corrupt_file_is_detected(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(4096)
    (tmp_path / "x.dat").write_bytes(data)
    ref = store.put(tmp_path / "x.dat", producer="wf/step-a")
    case.overwrite(ref.uri, bytes(b ^ 0xFF for b in data))  # same size, other bytes

    with pytest.raises(ArtifactError) as err:
        store.get(ref, tmp_path / "out", verify=True)
    msg = str(err.value)
    assert "'x.dat'" in msg and "wf/step-a" in msg and ref.uri in msg and "corrupt" in msg
    assert not (tmp_path / "out" / "x.dat").exists()


def test_corrupt_directory_file_is_named(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "res")
    ref = store.put(src, producer="wf/sim")
    top = _sha(b"top\n")[7:]
    case.overwrite(f"{case.url}/objects/{top[:2]}/{top}", b"TOP\n")
    with pytest.raises(ArtifactError, match=r"'res'.*wf/sim.*corrupt.*'top.txt'"):
        store.get(ref, tmp_path / "out", verify=True)


def test_a_detected_corruption_is_repaired_by_the_next_put(
    case: Case, store: ArtifactStore, tmp_path: Path
) -> None:
    """The error says "re-run the producer": that must work, although a commit trusts what
    is stored under a digest (the damaged object and its directory's manifest are dropped)."""
    for src in (tmp_path / "x.dat", _tree(tmp_path / "res") / "top.txt"):
        if src.name == "x.dat":
            src.write_bytes(os.urandom(4096))
        data = src.read_bytes()
        ref = store.put(src.parent if src.name == "top.txt" else src, producer="wf/p")
        digest = _hash_path(src)
        case.overwrite(f"{case.url}/objects/{digest[:2]}/{digest}", bytes(b ^ 1 for b in data))
        with pytest.raises(ArtifactError, match="corrupt"):
            store.get(ref, tmp_path / "bad", verify=True)
        src.unlink()  # the producer runs again and writes its file afresh (on a local store
        src.write_bytes(data)  # its old file *was* the object: the same inode)
        again = store.put(src.parent if src.name == "top.txt" else src, producer="wf/p")
        assert again == ref
        got = store.get(again, tmp_path / f"good-{src.name}", verify=True)
        fetched = got / "top.txt" if src.name == "top.txt" else got
        assert fetched.read_bytes() == data


def test_a_local_object_of_the_wrong_size_is_replaced_on_commit(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    (tmp_path / "a").write_bytes(b"payload")
    ref = store.put(tmp_path / "a")
    obj = store.local_path(ref)
    assert obj is not None
    os.chmod(obj, 0o600)
    obj.write_bytes(b"payload, damaged")
    os.chmod(obj, 0o400)
    (tmp_path / "b").write_bytes(b"payload")  # a producer re-run writes the same bytes
    assert store.put(tmp_path / "b").hexdigest == ref.hexdigest
    assert store.get(ref, tmp_path / "out").read_bytes() == b"payload"


def test_verified_get_keeps_execute_bits(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    src = _tree(tmp_path / "res")
    ref = store.put(src)
    got = store.get(ref, tmp_path / "out", verify=True)
    # the object, the producer's file (the same inode) and the copy all stay executable
    assert os.access(src / "run.sh", os.X_OK) and os.access(got / "run.sh", os.X_OK)
    assert not (src / "run.sh").stat().st_mode & 0o222


def test_writable_object_is_rehashed_without_verify(store: ArtifactStore, tmp_path: Path) -> None:
    if not store.is_local:
        pytest.skip("the hard-link fast path is local")
    (tmp_path / "x").write_bytes(b"hello")
    ref = store.put(tmp_path / "x")
    obj = store.local_path(ref)
    assert obj is not None
    os.chmod(obj, 0o644)  # someone made it writable: the name alone is no longer trusted
    obj.write_bytes(b"HELLO")
    with pytest.raises(ArtifactError, match="corrupt"):
        store.get(ref, tmp_path / "out")


def test_missing_objects(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "res")
    ref = store.put(src, producer="wf/sim")
    top = _sha(b"top\n")[7:]
    case.delete(f"{case.url}/objects/{top[:2]}/{top}")
    with pytest.raises(ArtifactError, match=r"'res'.*wf/sim.*missing.*'top.txt'"):
        store.get(ref, tmp_path / "out")
    assert not store.exists(ref)  # its manifest went too (see the repair test below)
    with pytest.raises(ArtifactError, match=r"missing"):
        store.get(ref, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # no partial tree left behind


def test_a_directory_missing_objects_is_repaired_by_the_next_put(
    case: Case, store: ArtifactStore, tmp_path: Path
) -> None:
    """The error says "re-run the producer": with some of a directory's objects gone (a
    lifecycle rule, a hand clean-up) its manifest stayed, and the producer's commit, finding
    the manifest, uploaded nothing: every re-run failed its consumer the same way."""
    src = _tree(tmp_path / "res")
    ref = store.put(src, producer="wf/sim")
    top = _sha(b"top\n")[7:]
    case.delete(f"{case.url}/objects/{top[:2]}/{top}")
    with pytest.raises(ArtifactError, match="missing"):
        store.get(ref, tmp_path / "bad")
    again = store.put(src, producer="wf/sim")  # the producer runs again
    assert again == ref
    got = store.get(again, tmp_path / "good", verify=True)
    assert (got / "top.txt").read_text() == "top\n"


def test_tampered_manifest_cannot_escape(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    (tmp_path / "f").write_text("x")
    file_ref = store.put(tmp_path / "f")
    evil = json.dumps(
        {
            "format": "dflow-async/manifest/1",
            "files": {"../../escaped": {"digest": file_ref.digest, "size": 1, "mode": 0o644}},
            "dirs": [],
            "links": {},
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    h = hashlib.sha256(evil).hexdigest()
    path = tmp_path / "store" / "manifests" / h[:2] / f"{h}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(evil)
    ref = ArtifactRef(uri=str(path), digest=f"sha256:{h}", size=1, kind="dir", name="d")
    with pytest.raises(ArtifactError, match="invalid manifest"):
        store.get(ref, tmp_path / "w" / "x")
    assert not (tmp_path / "escaped").exists()


# -- safety -----------------------------------------------------------------------------------


def test_symlink_out_of_the_directory_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    d = tmp_path / "out"
    d.mkdir()
    (d / "ok.txt").write_text("fine")
    (d / "leak").symlink_to(secret)
    with pytest.raises(ArtifactError, match=r"'out'.*wf/leaky.*symlink 'leak' points outside"):
        store.put(d, producer="wf/leaky")
    (d / "leak").unlink()
    (d / "up").symlink_to("..")
    with pytest.raises(ArtifactError, match="points outside"):
        store.put(d)


def test_refs_are_checked(tmp_path: Path) -> None:
    good = {"uri": "x", "digest": "sha256:" + "0" * 64, "size": 1, "kind": "file", "name": "a"}
    assert ArtifactRef.from_json(good).producer is None
    for bad in (
        {"name": "../a"},
        {"name": "a/b"},
        {"name": ".."},
        {"digest": "md5:abc"},
        {"digest": "sha256:../../etc"},
        {"kind": "link"},
        {"size": -1},
        {"size": "1"},
    ):
        with pytest.raises(ArtifactError):
            ArtifactRef.from_json({**good, **bad})
    with pytest.raises(ArtifactError):
        ArtifactRef.from_json({"uri": "x"})


def test_local_store_files_are_private(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    store.check()
    (tmp_path / "f").write_text("x")
    obj = store.local_path(store.put(tmp_path / "f"))
    assert obj is not None
    assert stat.S_IMODE(obj.stat().st_mode) == 0o400
    for d in ("objects", "manifests", "values", "tmp", obj.parent.relative_to(tmp_path / "store")):
        assert stat.S_IMODE((tmp_path / "store" / d).stat().st_mode) == 0o700


# -- the local fast path and the caches ---------------------------------------------------------


def test_local_put_and_get_are_hard_links(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    assert store.is_local
    src = tmp_path / "w1" / "out.dat"
    src.parent.mkdir()
    src.write_bytes(os.urandom(10_000))
    ref = store.put(src)
    obj = store.local_path(ref)
    assert obj is not None and obj.stat().st_ino == src.stat().st_ino  # no byte was copied
    assert not obj.stat().st_mode & 0o222  # read-only: the producer's file too

    got = store.get(ref, tmp_path / "w2")
    assert got.stat().st_ino == obj.stat().st_ino and not got.stat().st_mode & 0o222
    if os.geteuid() != 0:  # root ignores permission bits
        with pytest.raises(PermissionError):
            got.open("ab")  # a consumer cannot scribble on the stored object

    tree = store.get(store.put(_tree(tmp_path / "d")), tmp_path / "w3")
    assert (tree / "top.txt").stat().st_ino == (tmp_path / "d" / "top.txt").stat().st_ino
    assert os.access(tree / "run.sh", os.X_OK)  # executables keep their bit


def test_pass_through_is_not_rehashed(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "res")
    ref = store.put(src, producer="wf/a")
    got = store.get(ref, tmp_path / "step2")
    for f in got.rglob("*"):
        if f.is_file() and not f.is_symlink():
            # get recorded each materialised file's digest under its (dev, ino, size, mtime)
            assert DIGESTS.get(stat_key(f.stat())) is not None
    again = store.put(got, producer="wf/b")  # the OP passed its input through
    assert again.digest == ref.digest and again.producer == "wf/b"


@pytest.mark.parametrize("case", ["memory", "s3"], indirect=True)
def test_remote_get_is_served_from_the_cache(
    case: Case, store: ArtifactStore, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "res")
    ref = store.put(src)
    (tmp_path / "f.bin").write_bytes(os.urandom(2048))
    fref = store.put(tmp_path / "f.bin")
    store.get(ref, tmp_path / "first")
    store.get(fref, tmp_path / "first")

    case.fs.rm(case.root, recursive=True)  # server side: everything is gone
    assert not store.exists(ref)
    # Same machine, same digests: no download needed, even from a freshly unpickled store.
    gets = case.requests("GET") if case.kind == "s3" else 0
    reopened = pickle.loads(pickle.dumps(store))
    got = reopened.get(ref, tmp_path / "second")
    assert _snapshot(got) == _snapshot(src)
    assert reopened.get(fref, tmp_path / "second").read_bytes() == (tmp_path / "f.bin").read_bytes()
    if case.kind == "s3":
        assert case.requests("GET") == gets  # not one request reached the server
    assert reopened.local_path(fref) is None


# -- BigParameter values --------------------------------------------------------------------------


def test_values(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    as_json = {"energies": [1.5, -2.25, 0], "labels": ["a", "b"], "ok": True, "none": None}
    ref = store.put_value(as_json, producer="wf/v")
    assert ref.name == "value.json" and ref.uri.startswith(case.url + "/values/")
    assert store.get_value(ref) == as_json
    assert json.loads(case.fs.cat_file(case.raw(ref.uri))) == as_json  # readable as is
    assert store.put_value(dict(as_json)) == ArtifactRef(**{**ref.to_json(), "producer": None})

    surrogate = os.fsdecode(b"caf\xe9.txt")  # what os.listdir gives for a non-UTF-8 name
    for not_json in [(1, 2), {1: "int key"}, {"s": {1, 2}}, float("nan"), b"bytes", surrogate]:
        r = store.put_value(not_json)
        assert r.name == "value.pickle"
        back = store.get_value(r)
        assert back == not_json or (back != back and not_json != not_json)  # nan

    case.overwrite(ref.uri, b'{"energies":[9.9]}')
    with pytest.raises(ArtifactError, match=r"'value.json'.*wf/v.*corrupt"):
        case.store(tmp_path / "another-machine").get_value(ref)


# -- check() ----------------------------------------------------------------------------------


def test_check_unknown_protocol() -> None:
    with pytest.raises(ArtifactError, match=r"'nosuchproto'"):
        ArtifactStore("nosuchproto://bucket/x").check()


def test_check_missing_package() -> None:
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(ArtifactError, match=r"pip install gcsfs"):
            ArtifactStore("gcs://bucket/x").check()
    else:
        pytest.skip("gcsfs is installed")


def test_check_missing_bucket(s3_endpoint: str) -> None:
    store = ArtifactStore("s3://no-such-bucket-here/x", _s3_options(s3_endpoint))
    with pytest.raises(ArtifactError, match=r"s3://no-such-bucket-here/x does not exist"):
        store.check()


def test_check_unwritable_local_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ArtifactError, match=r"artifact store .*file/store"):
        ArtifactStore(str(tmp_path / "file" / "store")).check()


def test_stale_digest_cache_never_names_a_new_object(tmp_path: Path) -> None:
    """A file rewritten in place with its size and mtime restored looks unchanged to the cache;
    the cache may then only skip work, never put these bytes under the old digest."""
    f = tmp_path / "data.bin"
    f.write_bytes(b"A" * 1000)
    first = ArtifactStore(str(tmp_path / "store1")).put(f)
    st = f.stat()
    os.chmod(f, 0o644)
    f.write_bytes(b"B" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stat_key(f.stat()) == stat_key(st)  # indistinguishable by stat

    other = ArtifactStore(str(tmp_path / "store2"))
    ref = other.put(f)
    assert ref.digest == _sha(b"B" * 1000) != first.digest
    assert other.get(ref, tmp_path / "out", verify=True).read_bytes() == b"B" * 1000


def test_source_on_another_filesystem_is_copied(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem")
    src = shm / f"dflow-test-{uuid.uuid4().hex}"
    src.mkdir()
    try:
        (src / "x.txt").write_text("across devices")
        store = ArtifactStore(str(tmp_path / "store"))
        ref = store.put(src / "x.txt")
        obj = store.local_path(ref)
        assert obj is not None and obj.stat().st_ino != (src / "x.txt").stat().st_ino
        assert stat.S_IMODE(obj.stat().st_mode) == 0o400
        assert (src / "x.txt").stat().st_mode & 0o200  # the producer's file was left alone
        out = store.get(ref, src / "out")  # and back across: a copy, read-only like a link
        assert out.read_text() == "across devices" and not out.stat().st_mode & 0o222
    finally:
        for p in sorted(src.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() else p.rmdir()
        src.rmdir()


def test_empty_directory(case: Case, store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    ref = store.put(tmp_path / "nothing")
    assert (ref.kind, ref.size) == ("dir", 0)
    got = store.get(ref, tmp_path / "out")
    assert got.is_dir() and list(got.iterdir()) == []


# -- digests, manifests, files changing under a commit, and the parallel helpers ---------------


@pytest.mark.parametrize("swap", ["append", "replace"])
def test_file_changed_while_committed_is_refused(
    swap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed after it was hashed: grown in place, or replaced by another file of the same
    size and mtime (a rename over it: only the inode tells). Nothing is committed."""
    import dflow_async._store_backends as backends

    src = tmp_path / "d" / "x.bin"
    src.parent.mkdir()
    src.write_bytes(b"A" * 4096)
    real_hash = backends.hash_fd

    def hash_then_change(fd: int, size: int = -1) -> str:
        hexdigest = real_hash(fd, size)
        st = src.stat()
        if swap == "append":
            with open(src, "ab") as fh:
                fh.write(b"more")
        else:
            other = tmp_path / "other.bin"
            other.write_bytes(b"B" * 4096)
            os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(other, src)
        return hexdigest

    monkeypatch.setattr(backends, "hash_fd", hash_then_change)
    store = ArtifactStore(str(tmp_path / "store"))
    for what in (src, src.parent):  # a file, and a file of a directory
        DIGESTS.clear()
        src.unlink()
        src.write_bytes(b"A" * 4096)
        with pytest.raises(ArtifactError, match="still writing"):
            store.put(what, producer="wf/racy")
        assert [p for p in (tmp_path / "store" / "objects").rglob("*") if p.is_file()] == []


def test_manifest_bytes_are_canonical_json() -> None:
    from dflow_async._store_tree import MANIFEST_FORMAT, ManifestFile, manifest_bytes

    files = {
        name: ManifestFile(hashlib.sha256(name.encode()).hexdigest(), i, 0o644 | (i % 2) * 0o111)
        for i, name in enumerate(["b", "a/z", "a b/ü ñ", 'q"uote', "tab\there", "é", "Z", "a/b"])
    }
    dirs, links = ["a", "a b", "a/empty"], {"latest": "a/z", "ü": "é"}
    expected = json.dumps(
        {
            "format": MANIFEST_FORMAT,
            "files": {
                r: {"digest": f"sha256:{f.hexdigest}", "size": f.size, "mode": f.mode}
                for r, f in files.items()
            },
            "dirs": sorted(dirs),
            "links": links,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    assert manifest_bytes(files, list(reversed(dirs)), links) == expected
    empty = {"dirs": [], "files": {}, "format": MANIFEST_FORMAT, "links": {}}
    assert manifest_bytes({}, [], {}) == json.dumps(empty, separators=(",", ":")).encode()


def test_digests_with_a_trailing_newline_are_refused() -> None:
    from dflow_async._store_backends import key
    from dflow_async._store_tree import TreeError, parse_manifest

    bad = "a" * 64 + "\n"  # "$" in a regex matches before a final newline
    with pytest.raises(ValueError):
        key("objects", bad)
    good = {"uri": "x", "digest": "sha256:" + "0" * 64, "size": 1, "kind": "file", "name": "a"}
    with pytest.raises(ArtifactError):
        ArtifactRef.from_json({**good, "digest": f"sha256:{bad}"})
    doc = {
        "format": "dflow-async/manifest/1",
        "files": {"f": {"digest": f"sha256:{bad}", "size": 1, "mode": 0o644}},
        "dirs": [],
        "links": {},
    }
    with pytest.raises(TreeError, match="bad digest"):
        parse_manifest(json.dumps(doc).encode())


def _boom(x: int) -> int:
    if x == 57:
        raise KeyError(x)
    return x


def test_parallel_map_keeps_order_and_raises() -> None:
    from dflow_async._store_hash import parallel_map

    items = list(range(100))
    for threads, chunk in [(1, 1), (2, 1), (3, 7), (4, 1000)]:
        assert parallel_map(lambda x: x * x, items, threads, chunk=chunk) == [x * x for x in items]
    with pytest.raises(KeyError):
        parallel_map(_boom, items, 3)


def test_triage_map_keeps_order_and_raises() -> None:
    from dflow_async._store_hash import triage_map

    items = list(range(100))

    # cheap items answered by the triage, the others by the helpers, in order either way
    def first(x: int) -> tuple[int | None, str]:
        return (x if x % 3 else None), f"state{x}"

    assert triage_map(first, lambda x, s: int(s[5:]) + 1000, items, 3) == [
        x if x % 3 else x + 1000 for x in items
    ]
    with pytest.raises(KeyError):
        triage_map(first, lambda x, s: _boom(x), [57] * 10, 3)
    with pytest.raises(KeyError):
        triage_map(lambda x: (_boom(x), ""), lambda x, s: x, items, 3)


def test_pass_through_into_another_store_stores_every_object(tmp_path: Path) -> None:
    """Digests cached by a get from one store name no object in another: the second store must
    still get every object (hashed afresh before they are named by those digests)."""
    first = ArtifactStore(str(tmp_path / "one"))
    second = ArtifactStore(str(tmp_path / "two"))
    ref = first.put(_tree(tmp_path / "res"))
    got = first.get(ref, tmp_path / "step2")
    again = second.put(got)
    assert again.digest == ref.digest
    out = second.get(again, tmp_path / "step3", verify=True)
    assert _snapshot(out) == _snapshot(got)
