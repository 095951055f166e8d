"""What ``Workflow.query_step`` returns: Dflow's ``ArgoStep``, built from native step records.

A fan-out step is one step whose outputs are lists in slice order; when its key uses
``{{item}}`` every slice is also a step of its own (``name[i]``) with its own key and outputs.
``modify_output_parameter`` / ``modify_output_artifact`` change this object only, and
``Workflow.submit(reuse_step=[...])`` then serves the modified outputs.
"""

from __future__ import annotations

import datetime
from typing import Any

from dflow_async._records import StepRecord
from dflow_async.dflow._artifacts import artifact_value
from dflow_async.dflow._unsupported import refuse

__all__ = ["ArgoArtifact", "ArgoParameter", "ArgoStep", "StepIO"]

_PHASES = {"Cancelled": "Failed"}  # Argo has no Cancelled node phase


class _AttrItems:
    """Attribute and item access, as Dflow's ``ArgoObjectDict``."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: str) -> bool:
        return hasattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class ArgoParameter(_AttrItems):
    """An output parameter; a ``BigParameter`` kept in the artifact store is loaded on first
    access of ``value``, as Dflow loads big parameters from their artifact."""

    def __init__(self, name: str, value: Any, type: Any = None) -> None:
        self.name = name
        self._raw = value
        self.type = type

    @property
    def value(self) -> Any:
        self._raw = _loaded(self._raw)
        return self._raw

    @value.setter
    def value(self, value: Any) -> None:
        self._raw = value

    def recover(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value}

    def __repr__(self) -> str:
        return f"ArgoParameter({self.name!r}, {self.value!r})"


def _loaded(value: Any) -> Any:
    # the core's BigValue (by name: it is private): a reference whose .value loads the object
    if type(value).__name__ == "BigValue" and hasattr(value, "ref"):
        return value.value
    if isinstance(value, list) and any(type(v).__name__ == "BigValue" for v in value):
        return [_loaded(v) for v in value]
    return value


class ArgoArtifact(_AttrItems):
    """An output artifact; ``local_path`` is a path or a list/dict of paths, and
    ``download_artifact`` accepts the object itself."""

    def __init__(self, name: str, local_path: Any) -> None:
        self.name = name
        self.local_path = local_path

    def recover(self) -> dict[str, Any]:
        return {"name": self.name, "local_path": self.local_path}

    def __repr__(self) -> str:
        return f"ArgoArtifact({self.name!r}, {self.local_path!r})"


class StepIO(_AttrItems):
    def __init__(self, parameters: dict[str, ArgoParameter], artifacts: dict[str, ArgoArtifact]):
        self.parameters = parameters
        self.artifacts = artifacts


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ArgoStep(_AttrItems):
    """One step of a run: ``phase``, ``key``, ``name`` (its path in the run), ``displayName``,
    ``type`` (Pod, Steps or DAG), ``outputs.parameters[x].value``, ``outputs.artifacts[y]``."""

    def __init__(self, record: StepRecord, workflow: str, type: str) -> None:
        self.workflow = workflow
        self.record = record
        self.name = record.path
        self.displayName = record.name
        self.id = record.path
        self.key = record.key
        self.phase = _PHASES.get(record.phase, record.phase)
        self.type = type
        self.templateName = record.template
        self.startedAt = _iso(record.start)
        self.finishedAt = _iso(record.end)
        self.message = record.error
        self.attempts = record.attempts
        key_par = (
            {} if record.key is None else {"dflow_key": ArgoParameter("dflow_key", record.key)}
        )
        # the native record keeps outputs, not inputs; only the key is known
        self.inputs = StepIO(key_par, {})
        self.outputs = StepIO(
            {n: ArgoParameter(n, v) for n, v in record.outputs.parameters.items()},
            {n: ArgoArtifact(n, p) for n, p in record.outputs.artifacts.items()},
        )

    def modify_output_parameter(self, name: str, value: Any) -> None:
        """Change an output parameter (for ``reuse_step``)."""
        self.outputs.parameters[name].value = value

    def modify_output_artifact(self, name: str, s3: Any) -> None:
        """Replace an output artifact with an uploaded (or another step's) artifact."""
        self.outputs.artifacts[name].local_path = artifact_value(s3)

    def get_duration(self) -> datetime.timedelta:
        if self.record.start is None:
            return datetime.timedelta()
        end = (
            self.record.end if self.record.end is not None else datetime.datetime.now().timestamp()
        )
        return datetime.timedelta(seconds=end - self.record.start)

    def retry(self) -> None:
        refuse("ArgoStep.retry()", "submit again with reuse_step=[...] for the steps to keep")

    def get_pod(self) -> None:
        refuse("ArgoStep.get_pod() (Kubernetes pods)")

    def get_script(self) -> None:
        refuse("ArgoStep.get_script() (pod scripts)")

    def replay(self) -> None:
        refuse("ArgoStep.replay() (pod replay)")

    def __repr__(self) -> str:
        key = f" key={self.key!r}" if self.key else ""
        return f"<ArgoStep {self.name!r}{key} {self.phase}>"
