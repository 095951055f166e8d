"""Dflow's ``config`` and ``s3_config`` dictionaries.

Dflow programs set Argo/Kubernetes/MinIO settings (``config["host"]``, ``s3_config["endpoint"]``,
``config["mode"] = "debug"``...). They are accepted and kept; the Argo and Kubernetes ones have
no effect (there is no server), the MinIO ones reach an ``s3://`` store (below). Two keys are
dflow-async's own:

* ``config["executor"]``: the executor steps run on by default (``"inline"``; ``"process"``,
  or any installed executor name or instance);
* ``config["store"]``: where runs and uploads are kept (default ``$DFLOW_ASYNC_HOME`` or
  ``./.dflow-async``), or an object-store URL for the artifacts (``s3://bucket/prefix``).

With an ``s3://`` store, the ``s3_config`` keys a program sets (or their ``DFLOW_S3_*``
variables) are Dflow's MinIO settings and become s3fs storage options: ``endpoint`` (with
``secure``), ``access_key``, ``secret_key``; ``bucket_name`` (and ``prefix``) name the bucket
when the URL is just ``s3://``. Keys left at Dflow's placeholder defaults (``127.0.0.1:9000``,
``admin``) are not used, so AWS_* credentials and endpoints still apply.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "config",
    "s3_config",
    "set_config",
    "set_s3_config",
    "storage_options",
    "store_root",
    "store_url",
]

config: dict[str, Any] = {
    "host": os.environ.get("DFLOW_HOST", "https://127.0.0.1:2746"),
    "namespace": os.environ.get("DFLOW_NAMESPACE", "argo"),
    "token": os.environ.get("DFLOW_TOKEN"),
    "k8s_config_file": os.environ.get("DFLOW_K8S_CONFIG_FILE"),
    "k8s_api_server": os.environ.get("DFLOW_K8S_API_SERVER"),
    "mode": os.environ.get("DFLOW_MODE", "default"),
    "archive_mode": "tar",
    "util_image": "python:3.8",
    "lineage": None,
    "detach": False,
    "executor": os.environ.get("DFLOW_ASYNC_EXECUTOR", "inline"),
    "store": None,
}


class _Settings(dict[str, Any]):
    """A settings dictionary that remembers the keys given to it (assigned or ``update``d):
    only those are used, Dflow's placeholder defaults must not hide AWS_* settings."""

    def __init__(self, values: dict[str, Any], given: set[str]) -> None:
        super().__init__(values)
        self.given = given

    def __setitem__(self, key: str, value: Any) -> None:
        self.given.add(key)
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


_S3_ENV = {
    "endpoint": "DFLOW_S3_ENDPOINT",
    "access_key": "DFLOW_S3_ACCESS_KEY",
    "secret_key": "DFLOW_S3_SECRET_KEY",
    "bucket_name": "DFLOW_S3_BUCKET_NAME",
}

s3_config: dict[str, Any] = _Settings(
    {
        "endpoint": os.environ.get("DFLOW_S3_ENDPOINT", "127.0.0.1:9000"),
        "console": os.environ.get("DFLOW_S3_CONSOLE", "http://127.0.0.1:9001"),
        "access_key": os.environ.get("DFLOW_S3_ACCESS_KEY", "admin"),
        "secret_key": os.environ.get("DFLOW_S3_SECRET_KEY", "password"),
        "secure": False,
        "bucket_name": os.environ.get("DFLOW_S3_BUCKET_NAME", "my-bucket"),
        "repo_key": None,
        "repo_type": "s3",
        "prefix": "",
        "storage_client": None,
    },
    given={k for k, var in _S3_ENV.items() if var in os.environ},
)


def set_config(**kwargs: Any) -> None:
    config.update(kwargs)


def set_s3_config(**kwargs: Any) -> None:
    s3_config.update(kwargs)


def store_url(store: Any = None) -> Any:
    """The store a compatibility workflow uses: ``store``, else ``config["store"]``; a bare
    ``s3://`` takes its bucket from ``s3_config`` as Dflow does."""
    store = store if store is not None else config.get("store")
    if isinstance(store, str) and store.rstrip("/") in ("s3:", "s3:/"):
        parts = [s3_config["bucket_name"], str(s3_config.get("prefix") or "").strip("/")]
        return "s3://" + "/".join(p for p in parts if p)
    return store


def storage_options(store: Any) -> dict[str, Any]:
    """s3fs options from the ``s3_config`` keys a program set, for an ``s3://`` store."""
    if not str(store).startswith("s3://"):
        return {}
    given: set[str] = getattr(s3_config, "given", set())
    options: dict[str, Any] = {}
    if "access_key" in given:
        options["key"] = s3_config["access_key"]
    if "secret_key" in given:
        options["secret"] = s3_config["secret_key"]
    if "endpoint" in given:
        endpoint = str(s3_config["endpoint"])
        if "://" not in endpoint:  # Dflow's endpoint is host:port, "secure" picks the scheme
            endpoint = ("https://" if s3_config.get("secure") else "http://") + endpoint
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def store_root(store: Any = None) -> Path:
    """The local directory runs and uploads go to (absolute): the store itself when it is
    local, else the default store (the native rule: an object store holds only artifacts)."""
    from dflow_async._workflow import Workflow

    return Workflow("store", store=store_url(store)).store_path().absolute()
