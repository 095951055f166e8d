"""dflow-async: Dflow-style scientific workflows on a fast asyncio scheduler.

Import everything from here; the underscored modules are private.
"""

from __future__ import annotations

from dflow_async._artifacts import download_artifact, upload_artifact
from dflow_async._events import EventHook, configure_logging
from dflow_async._graph import (
    DAG,
    InputArtifact,
    InputParameter,
    Inputs,
    OutputArtifact,
    OutputParameter,
    Outputs,
    RetryPolicy,
    Slices,
    Step,
    Steps,
)
from dflow_async._op import (
    OP,
    OPIO,
    Artifact,
    BigParameter,
    OPIOSign,
    Parameter,
    StepContext,
    current_context,
    op,
)
from dflow_async._records import StepRecord
from dflow_async._refs import if_expression, item
from dflow_async._runs import Run, list_runs
from dflow_async._store import ArtifactStore
from dflow_async._workflow import Result, Workflow
from dflow_async.exceptions import (
    ArtifactError,
    DflowAsyncError,
    EditedInputWarning,
    EditedOpWarning,
    ExecutorClosedError,
    ExecutorNotFoundError,
    ExecutorStartError,
    FatalError,
    SignatureError,
    StepError,
    TransientError,
    WorkflowFailedError,
    WorkflowValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ArtifactError",
    "ArtifactStore",
    "BigParameter",
    "DAG",
    "DflowAsyncError",
    "EditedInputWarning",
    "EditedOpWarning",
    "EventHook",
    "ExecutorClosedError",
    "ExecutorNotFoundError",
    "ExecutorStartError",
    "FatalError",
    "InputArtifact",
    "InputParameter",
    "Inputs",
    "OP",
    "OPIO",
    "OPIOSign",
    "OutputArtifact",
    "OutputParameter",
    "Outputs",
    "Parameter",
    "Result",
    "RetryPolicy",
    "Run",
    "SignatureError",
    "Slices",
    "Step",
    "StepContext",
    "StepError",
    "StepRecord",
    "Steps",
    "TransientError",
    "Workflow",
    "WorkflowFailedError",
    "WorkflowValidationError",
    "__version__",
    "configure_logging",
    "current_context",
    "download_artifact",
    "if_expression",
    "item",
    "list_runs",
    "op",
    "upload_artifact",
]
