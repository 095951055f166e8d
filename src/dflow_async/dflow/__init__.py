"""Dflow's API on dflow-async: change ``from dflow import ...`` to
``from dflow_async.dflow import ...`` (and ``dflow.python`` to ``dflow_async.dflow.python``).

Workflows then run on the local asyncio scheduler and its executors: no Argo, Kubernetes or
MinIO. ``docs/migrating-from-dflow.md`` lists what is mapped how, and what is refused: Argo-only
features raise :class:`UnsupportedFeatureError` naming the feature rather than being ignored.
"""

from __future__ import annotations

import abc

from dflow_async.dflow._argo import (
    argo_concat,
    argo_enumerate,
    argo_len,
    argo_range,
    argo_sequence,
    argo_sum,
)
from dflow_async.dflow._argo_objects import ArgoStep
from dflow_async.dflow._artifacts import LocalArtifact, download_artifact, upload_artifact
from dflow_async.dflow._config import config, s3_config, set_config, set_s3_config
from dflow_async.dflow._io import (
    InputArtifact,
    InputParameter,
    Inputs,
    OutputArtifact,
    OutputParameter,
    Outputs,
    if_expression,
)
from dflow_async.dflow._step import Step, Task
from dflow_async.dflow._templates import DAG, Steps, randstr
from dflow_async.dflow._unsupported import UnsupportedFeatureError, refusing_class
from dflow_async.dflow._workflow import Workflow
from dflow_async.dflow.python._template import PythonOPTemplate


class OPTemplate(abc.ABC):  # noqa: B024 (a name to check against, with nothing to implement)
    """Dflow's base of templates, for annotations and ``isinstance``: ``PythonOPTemplate``,
    ``Steps`` and ``DAG`` are ones (dpgen2 annotates its block templates with it)."""


for _template in (PythonOPTemplate, Steps, DAG):
    OPTemplate.register(_template)

_K8S = "dflow-async runs steps locally or on its executors, without Kubernetes"
S3Artifact = refusing_class("S3Artifact", "upload local files with upload_artifact()")
HTTPArtifact = refusing_class("HTTPArtifact", "download the file, then upload_artifact()")
ShellOPTemplate = refusing_class("ShellOPTemplate", "wrap the script in a PythonOPTemplate OP")
PythonScriptOPTemplate = refusing_class("PythonScriptOPTemplate", "use PythonOPTemplate")
HookStep = refusing_class("HookStep", "Argo lifecycle hooks: add a step instead")
Secret = refusing_class("Secret", _K8S)
DockerSecret = refusing_class("DockerSecret", _K8S)
Resource = refusing_class("Resource", _K8S)
Executor = refusing_class("Executor", "choose a dflow-async executor: Workflow(executor=...)")
RemoteExecutor = refusing_class("RemoteExecutor", "use a dflow-async executor plugin")
ContainerExecutor = refusing_class("ContainerExecutor", "use a dflow-async executor plugin")
Context = refusing_class("Context", "choose a dflow-async executor: Workflow(executor=...)")
SlurmRemoteExecutor = refusing_class("SlurmRemoteExecutor", "use a dflow-async executor plugin")

__all__ = [
    "ArgoStep",
    "ContainerExecutor",
    "Context",
    "DAG",
    "DockerSecret",
    "Executor",
    "HTTPArtifact",
    "HookStep",
    "InputArtifact",
    "InputParameter",
    "Inputs",
    "LocalArtifact",
    "OPTemplate",
    "OutputArtifact",
    "OutputParameter",
    "Outputs",
    "PythonScriptOPTemplate",
    "RemoteExecutor",
    "Resource",
    "S3Artifact",
    "Secret",
    "ShellOPTemplate",
    "SlurmRemoteExecutor",
    "Step",
    "Steps",
    "Task",
    "UnsupportedFeatureError",
    "Workflow",
    "argo_concat",
    "argo_enumerate",
    "argo_len",
    "argo_range",
    "argo_sequence",
    "argo_sum",
    "config",
    "download_artifact",
    "if_expression",
    "randstr",
    "s3_config",
    "set_config",
    "set_s3_config",
    "upload_artifact",
]
