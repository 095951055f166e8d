"""Artifacts through whole workflows, on every kind of store: local, memory, and a real
S3-compatible server (moto's server mode on loopback, used through s3fs like users do)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dflow_async import (
    DAG,
    Artifact,
    ArtifactError,
    BigParameter,
    Slices,
    Step,
    Workflow,
    WorkflowValidationError,
    download_artifact,
    op,
    upload_artifact,
)

BUCKET = "flow-bucket"


def start_moto(bucket: str, **extra_options: Any) -> tuple[Any, dict[str, Any]]:
    """A moto S3 server on loopback holding ``bucket``, and the s3fs options that reach it
    (AWS_DEFAULT_REGION must be set)."""
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
        "key": "testing",
        "secret": "testing",
        **extra_options,
    }
    s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir(bucket)
    return server, options


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            mp.setenv(k, "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        server, options = start_moto(BUCKET)
        try:
            yield options
        finally:
            server.stop()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DFLOW_ASYNC_CACHE_DIR", str(tmp_path / "download-cache"))


@op
def make_dataset(n: int) -> {"data": Artifact(Path), "notes": Artifact(Path)}:
    Path("data").mkdir()
    for i in range(n):
        (Path("data") / f"part{i}.txt").write_text(f"{i}\n" * (i + 1))
    Path("notes.txt").write_text("raw data\n")
    return {"data": Path("data"), "notes": Path("notes.txt")}


@op
def count_lines(data: Artifact(Path), marker: str) -> {"lines": int, "data": Artifact(Path)}:
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    with open(marker, "a") as fh:
        fh.write("ran\n")
    lines = sum(len(p.read_text().splitlines()) for p in sorted(data.iterdir()))
    return {"lines": lines, "data": data}  # passes its input through


@op
def split(data: Artifact(Path)) -> {"parts": Artifact(list[Path])}:
    return {"parts": sorted(data.iterdir())}


@op
def double(part: Artifact(Path)) -> {"out": Artifact(Path)}:
    values = [int(x) * 2 for x in part.read_text().split()]
    Path("out.txt").write_text(" ".join(map(str, values)))  # the same name in every slice
    return {"out": Path("out.txt")}


@op
def total(outs: Artifact(list[Path]), notes: Artifact(Path)) -> int:
    assert notes.read_text() == "raw data\n"
    return sum(int(x) for p in outs for x in p.read_text().split())


def pipeline(marker: Path) -> DAG:
    dag = DAG("flow")
    make = Step("make", make_dataset, parameters={"n": 4})
    count = Step(
        "count",
        count_lines,
        parameters={"marker": str(marker)},
        artifacts={"data": make.outputs.artifacts["data"]},
    )
    sp = Step("split", split, artifacts={"data": count.outputs.artifacts["data"]})
    dbl = Step(
        "double",
        double,
        artifacts={"part": sp.outputs.artifacts["parts"]},
        slices=Slices(input_artifact=["part"], output_artifact=["out"]),
    )
    tot = Step(
        "total",
        total,
        artifacts={"outs": dbl.outputs.artifacts["out"], "notes": make.outputs.artifacts["notes"]},
    )
    dag.add([make, count, sp, dbl, tot])
    return dag


EXPECTED_TOTAL = sum(2 * i * (i + 1) for i in range(4))


def _store_for(kind: str, s3: Any) -> tuple[str | None, dict[str, Any]]:
    if kind == "local":
        return None, {}
    if kind == "memory":
        return f"memory://flow-{os.getpid()}-{id(s3)}", {}
    return f"s3://{BUCKET}/runs-{kind}", s3


@pytest.mark.parametrize(
    ("kind", "executor"),
    [
        ("local", "inline"),
        ("local", "process"),
        ("memory", "inline"),
        ("s3", "inline"),
        ("s3", "process"),
    ],
)
def test_pipeline_on_every_store(
    kind: str, executor: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    s3 = request.getfixturevalue("s3") if kind == "s3" else None
    store, options = _store_for(kind, s3)
    wf = Workflow("flow", dag=pipeline(tmp_path / "marker"), store=store, storage_options=options)
    result = wf.run(executor=executor)
    assert result.status == "Succeeded", [(r.path, r.errors) for r in result.records]
    assert result.query_step(name="count")[0].outputs.parameters["lines"] == 10
    assert result.query_step(name="total")[0].outputs.parameters["result"] == EXPECTED_TOTAL
    outs = result.query_step(name="double")[0].outputs.artifacts["out"]
    assert len(outs) == 4 and len({o.ref.digest for o in outs}) == 4  # no clash on out.txt
    data = result.query_step(name="make")[0].outputs.artifacts["data"]
    passed = result.query_step(name="count")[0].outputs.artifacts["data"]
    assert data.ref.digest == passed.ref.digest  # a pass-through is the same artifact
    assert data.ref.kind == "dir" and data.ref.producer == "make"
    if kind == "s3":
        assert data.ref.uri.startswith(f"s3://{BUCKET}/runs-s3/")
    # users download artifacts from wherever they live
    copies = download_artifact(outs, tmp_path / "dl", store=store, storage_options=options)
    assert sorted(p.read_text() for p in copies) == sorted(Path(o).read_text() for o in outs)


@pytest.mark.parametrize("kind", ["path", "memory"])
def test_download_finds_the_store_a_record_came_from(kind: str, tmp_path: Path) -> None:
    import shutil

    store = str(tmp_path / "elsewhere") if kind == "path" else f"memory://dl-{os.getpid()}"
    wf = Workflow("dl", store=store)
    wf.add(Step("make", make_dataset, parameters={"n": 2}))
    result = wf.run()
    data = result.query_step(name="make")[0].outputs.artifacts["data"]
    shutil.rmtree(result.run_dir / "steps")  # the producer's copy is gone: only the store has it
    (copy,) = download_artifact(data, tmp_path / "dl")  # no store=: the ref says where
    assert sorted(p.name for p in copy.iterdir()) == ["part0.txt", "part1.txt"]
    assert (copy / "part1.txt").read_text() == "1\n1\n"


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_everything_a_run_creates_is_owner_only(executor: str, tmp_path: Path) -> None:
    """Store, journal, logs, work dirs, scratch, step cache: nothing readable by others,
    whatever the umask (0o022 here, the common default)."""
    old = os.umask(0o022)
    try:

        @op
        def chatty(data: Artifact(Path)) -> {"out": Artifact(Path), "n": int}:  # type: ignore[valid-type]
            print("reading", data)
            Path("out.txt").write_text("x")
            return {"out": Path("out.txt"), "n": len(list(data.iterdir()))}

        wf = Workflow("private", executor=executor)
        mk = Step("make", make_dataset, parameters={"n": 2})
        wf.add(mk)
        wf.add(Step("chat", chatty, artifacts={"data": mk.outputs.artifacts["data"]}))
        assert wf.run().status == "Succeeded"
    finally:
        os.umask(old)
    home = tmp_path / ".dflow-async"
    seen = [home, *home.rglob("*")]
    assert len(seen) > 20
    leaky = [
        f"{oct(p.lstat().st_mode & 0o777)} {p.relative_to(tmp_path)}"
        for p in seen
        if not p.is_symlink()
        and p.lstat().st_mode & 0o077
        # what OPs write themselves follows the umask, until it is committed to the store
        and p.parent.name not in ("a0",)
    ]
    assert not leaky, leaky


def test_local_inputs_are_read_only_hard_links(tmp_path: Path) -> None:
    @op
    def inspect_input(data: Artifact(Path)) -> {"mode": int, "links": int}:
        f = next(iter(sorted(data.iterdir())))
        return {"mode": f.stat().st_mode, "links": f.stat().st_nlink}

    dag = DAG("ro")
    make = Step("make", make_dataset, parameters={"n": 2})
    look = Step("look", inspect_input, artifacts={"data": make.outputs.artifacts["data"]})
    dag.add([make, look])
    result = Workflow("ro", dag=dag).run()
    out = result.query_step(name="look")[0].outputs.parameters
    # no write bits: a consumer cannot modify what another step produced (root, which ignores
    # permission bits, is the exception: see the README's note on the local fast path)
    assert out["mode"] & 0o222 == 0
    assert out["links"] >= 2  # the store object and its links: no byte copy


def _consume_reused(wf: Workflow, produced: Any, marker: Path) -> Any:
    """Run ``count_lines`` in ``wf`` on the dataset of ``produced`` (an earlier run's "make"
    record, reused); returns the count step's record."""
    src = Step("make", make_dataset, parameters={"n": 3}, key="dataset")
    produced.key = "dataset"
    wf.add(src)
    wf.add(
        Step(
            "count",
            count_lines,
            parameters={"marker": str(marker)},
            artifacts={"data": src.outputs.artifacts["data"]},
        )
    )
    (count,) = wf.run(reuse_step=[produced]).query_step(name="count")
    return count


def test_corrupted_object_fails_the_consumer_before_its_body_runs(s3: Any, tmp_path: Path) -> None:
    import s3fs

    store = f"s3://{BUCKET}/corrupt"
    marker = tmp_path / "marker"
    first = Workflow("produce", store=store, storage_options=s3)
    first.add(Step("make", make_dataset, parameters={"n": 3}))
    produced = first.run().query_step(name="make")[0]
    # damage one stored file object behind the store's back
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3)
    objects = [p for p in fs.find(f"{BUCKET}/corrupt") if "/objects/" in p]
    assert objects
    for key in objects:
        fs.pipe(key, b"tampered bytes")
    second = Workflow("consume", store=store, storage_options=s3)
    count = _consume_reused(second, produced, marker)
    assert count.phase == "Failed"
    assert "[infra]" in count.errors[0]
    assert "data" in count.error and "make" in count.error and "s3://" in count.error
    assert not marker.exists()  # the OP body never ran


def test_verify_artifacts_catches_a_same_size_rewrite_of_a_local_object(tmp_path: Path) -> None:
    """The local fast path trusts a read-only object of the right size; a store others can
    write to asks for verify_artifacts=True, which re-hashes what it links."""
    store = str(tmp_path / "store")
    marker = tmp_path / "marker"
    first = Workflow("produce", store=store)
    first.add(Step("make", make_dataset, parameters={"n": 3}))
    produced = first.run().query_step(name="make")[0]
    objects = [p for p in Path(store, "artifacts", "objects").rglob("*") if p.is_file()]
    assert objects
    for stored in objects:  # same length, other bytes: the cheap check passes
        size = stored.stat().st_size
        os.chmod(stored, 0o644)
        stored.write_bytes(b"x" * size)
        os.chmod(stored, 0o444)

    second = Workflow("consume", store=store, verify_artifacts=True)
    count = _consume_reused(second, produced, marker)
    assert count.phase == "Failed" and "[infra]" in count.errors[0], count.errors
    assert "corrupt" in count.error and "make" in count.error
    assert not marker.exists()  # the OP body never ran


def test_output_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")

    @op
    def sneaky() -> {"f": Artifact(Path)}:
        os.symlink(secret, "innocent.txt")
        return {"f": Path("innocent.txt")}

    wf = Workflow("sneaky")
    wf.add(Step("sneaky", sneaky))
    (rec,) = wf.run().records
    assert rec.phase == "Failed"
    assert "outside its work directory" in rec.error


def test_async_op_writing_a_relative_path_is_told_to_use_its_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An async OP shares the loop's thread and current directory: a relative write lands
    in the process's directory. The failure says why and what to write instead; writing
    under current_context().workdir works."""
    from dflow_async import current_context

    monkeypatch.chdir(tmp_path)

    @op
    async def relative() -> {"f": Artifact(Path)}:
        Path("out.txt").write_text("lost")
        return {"f": Path("out.txt")}

    @op
    async def in_workdir() -> {"f": Artifact(Path)}:
        out = current_context().workdir / "out.txt"
        out.write_text("kept")
        return {"f": out}

    wf = Workflow("async-paths", store=str(tmp_path / "store"))
    wf.add([Step("relative", relative), Step("in-workdir", in_workdir)])
    result = wf.run()
    (bad,) = result.query_step(name="relative")
    assert bad.phase == "Failed"
    assert "async def OP shares the event loop's thread" in bad.error
    assert "current_context().workdir / 'out.txt'" in bad.error
    (good,) = result.query_step(name="in-workdir")
    assert good.phase == "Succeeded", good.errors
    assert good.outputs.artifacts["f"].read_text() == "kept"


def test_upload_then_use_on_any_executor(tmp_path: Path) -> None:
    src = tmp_path / "input"
    src.mkdir()
    (src / "a.txt").write_text("1 2 3")
    uploaded = upload_artifact(src)
    assert uploaded.ref is not None and uploaded.ref.kind == "dir"
    again = upload_artifact(src)
    assert again.ref.digest == uploaded.ref.digest  # content-addressed: stored once

    @op
    def read_all(d: Artifact(Path)) -> int:
        return sum(int(x) for x in (d / "a.txt").read_text().split())

    for executor in ("inline", "process"):
        wf = Workflow("uploaded")
        wf.add(Step("read", read_all, artifacts={"d": uploaded}))
        result = wf.run(executor=executor)
        assert result.records[0].outputs.parameters["result"] == 6, result.records[0].errors


def test_an_upload_is_a_snapshot_that_leaves_the_users_files_alone(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("version-1\n")
    os.chmod(src, 0o644)
    uploaded = upload_artifact(src, store=str(tmp_path / "store"))
    assert src.stat().st_mode & 0o777 == 0o644  # still the user's, still writable
    src.write_text("version-2, longer\n")  # editing it later changes nothing stored

    @op
    def read(f: Artifact(Path)) -> str:  # type: ignore[valid-type]
        return f.read_text()

    wf = Workflow("snapshot", store=str(tmp_path / "store"))
    wf.add(Step("read", read, artifacts={"f": uploaded}))
    (rec,) = wf.run().records
    assert rec.phase == "Succeeded", rec.errors
    assert rec.outputs.parameters["result"] == "version-1\n"


@op
def pass_through(
    f: Artifact(Path), d: Artifact(Path)
) -> {"f": Artifact(Path), "d": Artifact(Path)}:  # type: ignore[valid-type]
    return {"f": f, "d": d}


@op
def read_both(f: Artifact(Path), d: Artifact(Path)) -> str:  # type: ignore[valid-type]
    return f.read_text() + (d / "x.txt").read_text()


@op
def whole_dir(f: Artifact(Path), d: Artifact(Path)) -> Artifact(Path):  # type: ignore[valid-type]
    Path("made.txt").write_text(f.read_text().upper())
    return Path(".")  # its work dir, where d was fetched too (unread)


@op
def names_in(tree: Artifact(Path)) -> list[str]:  # type: ignore[valid-type]
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_an_op_returning_its_work_dir_stores_what_it_made_only(
    executor: str, tmp_path: Path
) -> None:
    """Path(".") is the attempt's work dir, where the library also put the inputs it fetched
    (.inputs/) and copies of inputs passed through (.passed/): those are not the output."""
    (tmp_path / "in.txt").write_text("abc")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "x.txt").write_text("X")
    wf = Workflow("wholedir", store=str(tmp_path / "store"), executor=executor)
    first = Step(
        "first", pass_through, artifacts={"f": tmp_path / "in.txt", "d": tmp_path / "tree"}
    )
    arts = first.outputs.artifacts
    whole = Step("whole", whole_dir, artifacts={"f": arts["f"], "d": arts["d"]})
    wf.add(first)
    wf.add(whole)
    wf.add(Step("names", names_in, artifacts={"tree": whole.outputs.artifacts["result"]}))
    result = wf.run()
    assert result.status == "Succeeded", [(r.name, r.errors) for r in result.records]
    assert result.query_step(name="names")[0].outputs.parameters["result"] == ["made.txt"]


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_an_input_passed_through_as_an_output_leaves_the_users_files_alone(
    executor: str, tmp_path: Path
) -> None:
    """A user's own file and directory, given as plain paths and returned as outputs, are
    copied into the store as uploads are: they keep their mode and their one link, and
    editing them later changes nothing stored. An input that came from the store, passed
    through again, is the stored object itself: nothing copied."""
    import stat

    mine = tmp_path / "mine.txt"
    mine.write_text("original")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "x.txt").write_text("X")
    for path in (mine, tree / "x.txt"):
        os.chmod(path, 0o644)
    store = str(tmp_path / "store")
    wf = Workflow("passthru", store=store, executor=executor)
    first = Step("first", pass_through, artifacts={"f": mine, "d": tree})
    arts = first.outputs.artifacts
    wf.add(first)
    wf.add(Step("again", pass_through, artifacts={"f": arts["f"], "d": arts["d"]}))
    result = wf.run()
    assert result.status == "Succeeded", [(r.name, r.errors) for r in result.records]
    for path in (mine, tree / "x.txt"):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_nlink) == (0o644, 1), path

    out = result.query_step(name="first")[0].outputs.artifacts
    mine.write_text("CHANGED!")  # the same size: no size check would notice
    (tree / "x.txt").write_text("Y")
    objects = wf.artifact_store()
    obj = objects.local_path(out["f"].ref)
    assert obj is not None and obj.read_text() == "original"
    # what the record names is a snapshot too, so downloads give what was stored
    got = download_artifact(out["f"], path=tmp_path / "got")
    assert [p.read_text() for p in got] == ["original"]
    got = download_artifact(out["d"], path=tmp_path / "got")
    assert [(p / "x.txt").read_text() for p in got] == ["X"]
    read = Workflow("reader", store=store, executor=executor)
    read.add(Step("read", read_both, artifacts={"f": out["f"], "d": out["d"]}))
    (rec,) = read.run().records
    assert rec.outputs.parameters["result"] == "originalX", rec.errors

    passed = result.query_step(name="again")[0].outputs.artifacts
    assert passed["f"].ref.digest == out["f"].ref.digest
    assert passed["d"].ref.digest == out["d"].ref.digest
    assert os.path.samefile(passed["f"], obj)  # the stored object, linked: not a copy


def test_uploads_to_another_store_are_adopted_or_refused_before_the_run(tmp_path: Path) -> None:
    """upload_artifact() without store= commits to the default store; a workflow with its own
    store takes the upload's files into that store, or says why it cannot, before any step."""
    data = tmp_path / "data.txt"
    data.write_text("4 5")
    uploaded = upload_artifact(data)

    @op
    def read_sum(f: Artifact(Path)) -> int:
        return sum(int(x) for x in f.read_text().split())

    def workflow(store: str) -> Workflow:
        wf = Workflow("adopt", store=store)
        wf.add(Step("read", read_sum, artifacts={"f": uploaded}))
        return wf

    from dflow_async import ArtifactStore

    target = ArtifactStore("memory://adopt-test")
    workflow("memory://adopt-test").validate()
    assert not target.exists(uploaded.ref)  # validating writes nothing
    result = workflow("memory://adopt-test").run()
    assert result.status == "Succeeded", result.records[0].errors
    assert target.exists(uploaded.ref)
    assert result.records[0].outputs.parameters["result"] == 9

    data.unlink()  # replaced, not edited: the stored object is this file's hard link
    data.write_text("changed")
    with pytest.raises(WorkflowValidationError, match=r"adopt.read: input artifact 'f'.*changed"):
        workflow("memory://adopt-test-2").run()
    data.unlink()
    with pytest.raises(WorkflowValidationError, match=r"no longer exists here"):
        workflow("memory://adopt-test-3").run()


def test_memory_store_with_process_executor_is_refused() -> None:
    wf = Workflow("mem", store="memory://nowhere", executor="process")
    wf.add(Step("make", make_dataset, parameters={"n": 1}))
    with pytest.raises(WorkflowValidationError, match="lives in this process's memory"):
        wf.run()


def test_broken_store_url_is_rejected_before_any_step_runs() -> None:
    wf = Workflow("broken", store="nosuchproto://bucket/x")
    wf.add(Step("make", make_dataset, parameters={"n": 1}))
    with pytest.raises(WorkflowValidationError) as info:
        wf.run()
    assert "store:" in str(info.value) and "nosuchproto" in str(info.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3:/bucket/x", "did you mean s3://bucket/x?"),
        ("s3:bucket/x", "did you mean s3://bucket/x?"),
        ("s3://", "names no location"),
        ("memory://", "names no location"),
    ],
)
def test_a_mistyped_store_url_is_rejected_not_taken_for_a_local_directory(
    url: str, says: str, tmp_path: Path
) -> None:
    """fsspec sees a protocol only before "://": "s3:/bucket/x" was a local directory named
    "s3:", where the run put its artifacts and succeeded; "s3://" lost its slashes and became
    one too. Each is refused before any step runs, naming the store and the likely URL, and
    nothing is created."""
    wf = Workflow("typo", store=url, storage_options={"anon": True})
    wf.add(Step("make", make_dataset, parameters={"n": 1}))
    with pytest.raises(WorkflowValidationError) as info:
        wf.run()
    assert f"artifact store {url!r}" in str(info.value) and says in str(info.value)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ArtifactError, match=r"did you mean|names no location"):
        upload_artifact(__file__, store=url)


def test_big_parameter_travels_by_reference(tmp_path: Path) -> None:
    from dflow_async import OP, OPIO, BigParameter, OPIOSign, Run

    class MakeTable(OP):
        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign({"n": int})

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign({"table": BigParameter(list)})

        def execute(self, op_in: OPIO) -> OPIO:
            return OPIO({"table": [[i, i * i] for i in range(op_in["n"])]})

    @op
    def column_sum(table: list, col: int) -> int:
        return sum(row[col] for row in table)

    for executor in ("inline", "process"):
        wf = Workflow("big")
        mk = Step("make", MakeTable, parameters={"n": 20_000})
        wf.add(mk)
        wf.add(
            Step("sum", column_sum, parameters={"table": mk.outputs.parameters["table"], "col": 1})
        )
        result = wf.run(executor=executor)
        assert result.query_step(name="sum")[0].outputs.parameters["result"] == sum(
            i * i for i in range(20_000)
        ), result.records[-1].errors
        made = result.query_step(name="make")[0].outputs
        assert made.parameters["table"][3] == [3, 9]  # records give values...
        big = made.raw_parameters["table"]  # ...and keep a reference to the store
        assert big.ref.producer == "make" and big.ref.size > 100_000
        assert big.value[3] == [3, 9]
        # the journal holds the reference, not 20,000 rows
        journal = tmp_path / ".dflow-async" / "runs" / result.run_id / "journal.sqlite"
        assert journal.stat().st_size < 200_000
        from_journal = Run.open(result.run_id).query_step(name="make")[0]
        assert from_journal.outputs.raw_parameters["table"].ref == big.ref
        assert from_journal.outputs.parameters["table"][19_999] == [19_999, 19_999**2]


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_big_parameter_outputs_of_a_fan_out_read_as_values(executor: str) -> None:
    from dflow_async import OP, OPIO, BigParameter, OPIOSign, Slices

    class Rows(OP):
        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign({"n": int})

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign({"rows": BigParameter(list), "n": int})

        async def execute(self, op_in: OPIO) -> OPIO:
            return OPIO({"rows": list(range(op_in["n"])), "n": op_in["n"]})

    wf = Workflow("bigfan", executor=executor)
    wf.add(
        Step(
            "rows",
            Rows,
            parameters={"n": [2, 3]},
            slices=Slices(input_parameter=["n"], output_parameter=["rows", "n"]),
        )
    )
    result = wf.run()
    (rec,) = result.query_step(name="rows")
    assert rec.phase == "Succeeded", rec.errors
    assert rec.outputs.parameters == {"rows": [[0, 1], [0, 1, 2]], "n": [2, 3]}
    assert all(type(v).__name__ == "BigValue" for v in rec.outputs.raw_parameters["rows"])


@op
def maybe_write(i: int) -> {"o": Artifact(Path)}:  # type: ignore[valid-type]
    if i == 2:
        raise ValueError("slice 2 fails")
    Path("o.txt").write_text(f"file{i}")
    return {"o": Path("o.txt")}


@op
def read_holes(fs: Artifact(list[Path | None])) -> list:  # type: ignore[valid-type]
    return [None if f is None else f.read_text() for f in fs]


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_failed_slices_leave_none_holes_that_consumers_and_downloads_accept(
    executor: str, tmp_path: Path
) -> None:
    wf = Workflow("holes", executor=executor)
    make = Step(
        "make",
        maybe_write,
        parameters={"i": [0, 1, 2, 3]},
        slices=Slices(input_parameter=["i"], output_artifact=["o"]),
        continue_on_failed=True,
    )
    wf.add(make)
    wf.add(Step("read", read_holes, artifacts={"fs": make.outputs.artifacts["o"]}))
    result = wf.run()
    (read,) = result.query_step(name="read")
    assert read.phase == "Succeeded", read.errors
    assert read.outputs.parameters["result"] == ["file0", "file1", None, "file3"]
    stacked = result.query_step(name="make")[0].outputs.artifacts["o"]
    assert stacked[2] is None
    got = download_artifact(stacked, tmp_path / "dl")
    assert [None if p is None else p.read_text() for p in got] == ["file0", "file1", None, "file3"]


@op
def produce_file() -> {"f": Artifact(Path)}:  # type: ignore[valid-type]
    Path("f.txt").write_text("f")
    return {"f": Path("f.txt")}


@pytest.mark.parametrize("form", ["{}", "file://{}", "file:{}", "local://{}"])
def test_every_spelling_of_a_local_store_url_names_the_same_directory(
    form: str, tmp_path: Path
) -> None:
    wanted = tmp_path / "wanted"
    wf = Workflow("local-urls", store=form.format(wanted))
    wf.add(Step("p", produce_file))
    result = wf.run()
    assert result.status == "Succeeded"
    ref = result.records[0].outputs.artifacts["f"].ref
    assert Path(ref.uri).is_relative_to(wanted / "artifacts")
    assert (wanted / "runs" / result.run_id).is_dir()


def test_a_store_that_goes_away_fails_its_consumer_as_infra_naming_the_artifact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The S3 server stops between producer and consumer: the consumer's fetch fails as an
    infra failure (retried by default) naming the artifact and its producer, not as a user
    error carrying botocore's bare message."""
    from dflow_async import RetryPolicy

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server, options = start_moto("outage", config_kwargs={"retries": {"max_attempts": 1}})

    @op
    def produce() -> {"f": Artifact(Path)}:
        Path("f.txt").write_text("data")
        return {"f": Path("f.txt")}

    @op
    def outage() -> int:
        server.stop()  # the store goes away between producer and consumer
        return 1

    @op
    def consume(f: Artifact(Path), x: int) -> str:
        return f.read_text()

    wf = Workflow("outage", store="s3://outage/p", storage_options=options)
    p = Step("produce", produce)
    o = Step("outage", outage)
    once = RetryPolicy(max_retries=1, backoff=0, jitter=0)
    c = Step(
        "consume",
        consume,
        artifacts={"f": p.outputs.artifacts["f"]},
        parameters={"x": o.outputs.parameters["result"]},
        retries=once,
    )
    wf.add([p])
    wf.add([o])
    wf.add([c])
    try:
        result = wf.run(journal=False)
    finally:
        server.stop()
    (rec,) = result.query_step(name="consume")
    assert rec.phase == "Failed"
    assert rec.attempts == 2, rec.errors  # retried: an infra failure
    assert rec.errors[0].startswith("attempt 0: [infra]"), rec.errors
    assert "produced by step 'produce'" in rec.errors[0]
    assert "could not be read from the store" in rec.errors[0]


def test_runs_on_an_s3_store_are_opened_with_the_same_store_url(s3: Any) -> None:
    """Runs on a remote store keep their journals locally (./.dflow-async); Run.open and
    list_runs take the same store= a Workflow was given, and storage_options to read its
    BigParameter values."""
    from dflow_async import Run, list_runs

    @op
    def table(n: int) -> {"rows": BigParameter(list)}:  # type: ignore[valid-type]
        return {"rows": list(range(n))}

    url = f"s3://{BUCKET}/runs-open"
    wf = Workflow("on-s3", store=url, storage_options=s3)
    wf.add(Step("table", table, parameters={"n": 5}))
    result = wf.run()
    assert result.status == "Succeeded"
    run = Run.open(result.run_id, store=url, storage_options=s3)
    assert run.query_step(name="table")[0].outputs.parameters["rows"] == [0, 1, 2, 3, 4]
    assert result.run_id in [r.run_id for r in list_runs(store=url)]


def _empty(options: dict[str, Any], prefix: str) -> None:
    """Everything under ``prefix`` gone from the bucket: an S3 server that restarted without
    its data, a bucket emptied by a lifecycle rule."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.rm(f"{BUCKET}/{prefix}", recursive=True)
    assert not fs.find(f"{BUCKET}/{prefix}")


def _counted(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_a_cache_entry_whose_objects_the_store_lost_is_a_miss(s3: Any, tmp_path: Path) -> None:
    """Cache entries live beside the runs, locally (./.dflow-async/cache); a remote store's
    objects can go without them. A hit on such an entry gave its consumers references nothing
    could fetch, and every later run hit it again: the store stayed broken for good. Now the
    entry is a miss, the step runs, and its outputs are committed afresh."""
    import shutil

    marker = tmp_path / "made"

    @op
    def produce(n: int) -> {"f": Artifact(Path), "rows": BigParameter(list)}:  # type: ignore[valid-type]
        with open(marker, "a") as fh:
            fh.write("ran\n")
        Path("f.txt").write_text("x" * n)
        return {"f": Path("f.txt"), "rows": list(range(n))}

    @op
    def consume(f: Artifact(Path), rows: BigParameter(list)) -> int:  # type: ignore[valid-type]
        return len(f.read_text()) + sum(rows)

    def run(prefix: str) -> Any:
        wf = Workflow("cached", store=f"s3://{BUCKET}/{prefix}", storage_options=s3)
        p = Step("produce", produce, parameters={"n": 4}, cache=True)
        c = Step(
            "consume",
            consume,
            artifacts={"f": p.outputs.artifacts["f"]},
            parameters={"rows": p.outputs.parameters["rows"]},
        )
        wf.add(p)
        wf.add(c)
        return wf.run()

    assert run("lost").status == "Succeeded"
    assert run("lost").query_step(name="produce")[0].cached  # the cache does work
    assert _counted(marker) == 1
    _empty(s3, "lost")
    shutil.rmtree(tmp_path / "download-cache", ignore_errors=True)  # no local copy to hide it
    result = run("lost")
    assert result.status == "Succeeded", [r.errors for r in result.records]
    assert _counted(marker) == 2
    assert not result.query_step(name="produce")[0].cached
    assert result.query_step(name="consume")[0].outputs.parameters["result"] == 4 + 6
    # an entry made on another store is no hit either: its objects are not in this one
    assert run("elsewhere").status == "Succeeded"
    assert _counted(marker) == 3


def test_a_consumer_of_a_big_parameter_hits_the_cache_when_its_producer_did() -> None:
    """A BigParameter input counted in the cache key as its pickle, which carried the store
    object the value came with: a freshly produced one has it, one from a cache hit has none.
    So a consumer missed the cache (and ran again) on the run where its producer first hit."""

    @op
    def produce(n: int) -> {"rows": BigParameter(list)}:  # type: ignore[valid-type]
        return {"rows": list(range(n))}

    @op
    def total(rows: BigParameter(list)) -> int:  # type: ignore[valid-type]
        return sum(rows)

    def run() -> Any:
        wf = Workflow("big-cache")
        p = Step("produce", produce, parameters={"n": 5}, cache=True)
        wf.add(p)
        wf.add(Step("total", total, parameters={"rows": p.outputs.parameters["rows"]}, cache=True))
        return wf.run()

    assert run().status == "Succeeded"
    second = run()
    assert second.query_step(name="produce")[0].cached
    assert second.query_step(name="total")[0].cached
    assert second.query_step(name="total")[0].outputs.parameters["result"] == 10


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_resume_runs_again_the_steps_whose_outputs_the_store_lost(
    s3: Any, tmp_path: Path, executor: str
) -> None:
    """A run on S3 stops on a failed slice; then the server loses its data (restarted
    without it). Resuming kept every succeeded step and finished slice, whose objects no
    consumer could fetch: the consumers failed naming a producer no resume would run, on
    every resume. Now the resume runs those again, and the run completes."""
    import shutil

    counts = tmp_path / "counts"
    counts.mkdir()
    broken = tmp_path / "broken"
    broken.touch()

    def mark(name: str) -> None:
        with open(counts / name, "a") as fh:
            fh.write("ran\n")

    @op
    def make(n: int) -> {"fl": Artifact(list[Path]), "rows": BigParameter(list)}:  # type: ignore[valid-type]
        mark("make")
        files = [Path(f"in{i}.txt") for i in range(n)]
        for i, p in enumerate(files):
            p.write_text(f"input {i}\n")
        return {"fl": files, "rows": list(range(n))}

    @op
    def work(x: Artifact(Path), i: int) -> {"o": Artifact(Path)}:
        mark(f"work-{i}")
        if i == 2 and broken.exists():
            raise RuntimeError("broken")
        Path("o.txt").write_text(x.read_text().upper())
        return {"o": Path("o.txt")}

    @op
    def gather(os_: Artifact(list[Path]), rows: BigParameter(list)) -> str:  # type: ignore[valid-type]
        return "".join(p.read_text() for p in os_) + str(sum(rows))

    prefix = f"resume-lost-{executor}"
    wf = Workflow("lost", store=f"s3://{BUCKET}/{prefix}", storage_options=s3)
    m = Step("make", make, parameters={"n": 3})
    w = Step(
        "work",
        work,
        artifacts={"x": m.outputs.artifacts["fl"]},
        parameters={"i": [0, 1, 2]},
        slices=Slices(
            input_artifact=["x"], input_parameter=["i"], output_artifact=["o"], pool_size=1
        ),
    )
    g = Step(
        "gather",
        gather,
        artifacts={"os_": w.outputs.artifacts["o"]},
        parameters={"rows": m.outputs.parameters["rows"]},
    )
    wf.add(m)
    wf.add(w)
    wf.add(g)
    first = wf.run(executor=executor)
    assert first.status == "Failed"
    assert [_counted(counts / n) for n in ("make", "work-0", "work-1")] == [1, 1, 1]
    _empty(s3, prefix)
    # another machine: nothing cached locally (process workers may keep an earlier one)
    shutil.rmtree(tmp_path / "download-cache", ignore_errors=True)
    broken.unlink()
    result = wf.run(resume=first.run_id)
    assert result.status == "Succeeded", [r.errors for r in result.records]
    (gathered,) = result.query_step(name="gather")
    assert gathered.outputs.parameters["result"] == "INPUT 0\nINPUT 1\nINPUT 2\n3"
    # what the store lost ran again, once
    assert [_counted(counts / n) for n in ("make", "work-0", "work-1")] == [2, 2, 2]


@pytest.mark.parametrize("output", ["artifact", "big"])
def test_a_store_that_goes_away_while_outputs_are_committed_fails_the_step_as_infra(
    monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    """The S3 server stops while the step's outputs are being committed: the step fails as
    an infra failure (retried), naming the output and the store, where botocore's bare
    EndpointConnectionError made it a user error of the OP's, never retried."""
    from dflow_async import RetryPolicy

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"gone-{output}"  # moto's buckets outlive its servers, in this process
    server, options = start_moto(bucket, config_kwargs={"retries": {"max_attempts": 1}})

    @op
    def produce_file() -> {"f": Artifact(Path)}:
        Path("f.txt").write_text("data")
        server.stop()  # the store goes away as the attempt ends
        return {"f": Path("f.txt")}

    @op
    def produce_big() -> {"rows": BigParameter(list)}:  # type: ignore[valid-type]
        server.stop()
        return {"rows": [1, 2]}

    wf = Workflow("gone", store=f"s3://{bucket}/p", storage_options=options)
    once = RetryPolicy(max_retries=1, backoff=0, jitter=0)
    wf.add(Step("produce", produce_file if output == "artifact" else produce_big, retries=once))
    try:
        result = wf.run(journal=False)
    finally:
        server.stop()
    (rec,) = result.records
    assert rec.phase == "Failed"
    assert rec.attempts == 2, rec.errors  # retried: an infra failure
    assert rec.errors[0].startswith("attempt 0: [infra]"), rec.errors
    name = "f.txt" if output == "artifact" else "rows"
    assert f"artifact {name!r} (produced by step 'produce') could not be committed" in rec.error
    assert f"s3://{bucket}/p" in rec.error and "check that the store is reachable" in rec.error


def test_a_run_not_found_on_a_remote_store_says_where_its_journal_is() -> None:
    """Runs on a remote store keep their journals locally: asked with store="s3://..." from
    another directory, the advice was to point at its store, which had just been done."""
    from dflow_async import Run
    from dflow_async._journal import JournalError

    with pytest.raises(JournalError) as info:
        Run.open("nope", store=f"s3://{BUCKET}/elsewhere")
    message = str(info.value)
    assert f"runs on s3://{BUCKET}/elsewhere keep their journals locally" in message
    assert "$DFLOW_ASYNC_HOME to its .dflow-async directory" in message
