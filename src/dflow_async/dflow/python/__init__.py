"""``dflow.python`` on dflow-async: replace ``from dflow.python import ...`` with
``from dflow_async.dflow.python import ...``.

``TransientError`` and ``FatalError`` are the native exceptions, so the retry policy of the
step (``PythonOPTemplate(retry_on_transient_error=...)``) sees them directly.
"""

from __future__ import annotations

from dflow_async.dflow.python._op import (
    OP,
    OPIO,
    Artifact,
    BigParameter,
    HDF5Datasets,
    NestedDict,
    OPIOSign,
    Parameter,
)
from dflow_async.dflow.python._template import PythonOPTemplate, Slices, upload_packages
from dflow_async.exceptions import FatalError, TransientError

__all__ = [
    "OP",
    "OPIO",
    "Artifact",
    "BigParameter",
    "FatalError",
    "HDF5Datasets",
    "NestedDict",
    "OPIOSign",
    "Parameter",
    "PythonOPTemplate",
    "Slices",
    "TransientError",
    "upload_packages",
]
