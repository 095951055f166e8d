"""Dflow's MinIO settings (``s3_config``) point the compatibility layer at an S3 store: a real
S3-compatible server (moto's server mode on loopback), with no AWS_* credentials around."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from compat_ops import Cat, Files

from dflow_async.dflow import Step, Workflow, _config, config, download_artifact, s3_config
from dflow_async.dflow.python import PythonOPTemplate

BUCKET = "dflow-bucket"


@pytest.fixture
def minio(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """host:port of an empty S3 server with BUCKET; only s3_config knows how to reach it."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import s3fs

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(var, "/nonexistent")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = s3fs.S3FileSystem(
        skip_instance_cache=True, key="k", secret="s", client_kwargs={"endpoint_url": endpoint}
    )
    fs.mkdir(BUCKET)
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


def test_s3_config_reaches_minio(minio: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    for key, value in (
        ("endpoint", minio),
        ("access_key", "k"),
        ("secret_key", "s"),
        ("secure", False),
        ("bucket_name", BUCKET),
        ("prefix", "team/runs"),
    ):
        monkeypatch.setitem(s3_config, key, value)
    monkeypatch.setitem(config, "store", "s3://")  # the bucket from s3_config, as Dflow's
    monkeypatch.setitem(config, "executor", "process")  # workers get the options too
    files = Step("files", PythonOPTemplate(Files), parameters={"n": 2})
    cat = Step("cat", PythonOPTemplate(Cat), artifacts={"dir": files.outputs.artifacts["files"]})
    wf = Workflow("minio")
    wf.add(files)
    wf.add(cat)
    wf.submit()
    wf.wait()
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="cat")[0].outputs.parameters["text"].value == (
        "task.0/data.txt=data 0;task.1/data.txt=data 1"
    )
    fs = s3fs.S3FileSystem(
        skip_instance_cache=True,
        key="k",
        secret="s",
        client_kwargs={"endpoint_url": f"http://{minio}"},
    )
    assert fs.find(f"{BUCKET}/team/runs/objects")  # the artifacts went to the bucket
    # runs stay local; with their work directories gone, downloads come from the bucket
    shutil.rmtree(Path(".dflow-async") / "runs" / str(wf.id) / "steps")
    art = Workflow(id=wf.id).query_step(name="files")[0].outputs.artifacts["files"]
    got = download_artifact(art, path="dl")
    assert got == ["dl/task.0/data.txt", "dl/task.1/data.txt"]
    assert Path(got[1]).read_text() == "data 1"
    assert not Path("s3:").exists()  # no local directory named after the URL


def test_storage_options_from_the_keys_set(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = _config._Settings(dict(s3_config), given=set())
    monkeypatch.setattr(_config, "s3_config", fresh)
    # Dflow's placeholder defaults (127.0.0.1:9000, admin/password) are not used
    assert _config.storage_options("s3://bucket/x") == {}
    fresh.update(endpoint="minio.example:9000", secure=True, access_key="a", secret_key="b")
    assert _config.storage_options("s3://bucket/x") == {
        "key": "a",
        "secret": "b",
        "client_kwargs": {"endpoint_url": "https://minio.example:9000"},
    }
    assert _config.storage_options("/local/store") == {}  # only for an s3:// store
    # the Workflow's own storage_options= win
    mine = {"anon": True}
    wf = Workflow("opts", store="s3://bucket/x", storage_options=mine)
    wf.add(Step("files", PythonOPTemplate(Files), parameters={"n": 1}))
    assert wf.native_workflow().storage_options == mine
    wf.storage_options = None
    assert wf.native_workflow().storage_options["key"] == "a"
