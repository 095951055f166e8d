"""Dflow's ``config`` and ``s3_config`` dictionaries.

Dflow programs set Argo/Kubernetes/MinIO settings (``config["host"]``, ``s3_config["endpoint"]``,
``config["mode"] = "debug"``...). They are accepted and kept, and have no effect: there is no
server. Two keys are dflow-async's own:

* ``config["executor"]``: the executor steps run on by default (``"inline"``; ``"process"``,
  or any installed executor name or instance);
* ``config["store"]``: where runs and uploads are kept (default ``$DFLOW_ASYNC_HOME`` or
  ``./.dflow-async``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["config", "s3_config", "set_config", "set_s3_config", "store_root"]

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

s3_config: dict[str, Any] = {
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
}


def set_config(**kwargs: Any) -> None:
    config.update(kwargs)


def set_s3_config(**kwargs: Any) -> None:
    s3_config.update(kwargs)


def store_root() -> Path:
    """The store runs and uploads go to (absolute)."""
    from dflow_async._workflow import default_store

    store = config.get("store")
    return (Path(store) if store is not None else default_store()).absolute()
