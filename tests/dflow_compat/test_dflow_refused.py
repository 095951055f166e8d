"""Argo/Kubernetes-only features are refused with an error naming them, never ignored."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from compat_ops import Echo, Square

import dflow_async.dflow as dflow
from dflow_async.dflow import (
    OutputArtifact,
    OutputParameter,
    Step,
    UnsupportedFeatureError,
    Workflow,
    if_expression,
)
from dflow_async.dflow.python import Artifact, PythonOPTemplate, Slices


def tpl(**kwargs: Any) -> PythonOPTemplate:
    return PythonOPTemplate(Square, **kwargs)


def _plugin(module: str, name: str) -> Any:
    # dpgen2 imports these with its step configuration: the import works, using them is refused
    import importlib

    return getattr(importlib.import_module(f"dflow_async.dflow.plugins.{module}"), name)


CASES: list[tuple[str, Callable[[], Any]]] = [
    ("volumes", lambda: tpl(volumes=["v"])),
    ("mounts", lambda: tpl(mounts=["m"])),
    ("sidecars", lambda: tpl(sidecars=["c"])),
    ("init_containers", lambda: tpl(init_containers=["c"])),
    ("output_artifact_save", lambda: tpl(output_artifact_save={"out": ["s3"]})),
    ("input_parameter_slices", lambda: tpl(input_parameter_slices={"x": "{{item}}"})),
    ("pre_script", lambda: tpl(pre_script="import os")),
    ("command", lambda: tpl(command=["mpirun", "python"])),
    ("pool_timeout", lambda: Slices(input_parameter=["x"], pool_timeout=10)),
    (
        "Slices('{{item}} + 1')",  # Python around the index: it failed every slice at run time
        lambda: Step(
            "s",
            tpl(slices=Slices("{{item}} + 1", input_parameter=["x"])),
            parameters={"x": [1]},
            with_param=[0],
        ),
    ),
    ("success_hook", lambda: Step("s", tpl(), parameters={"x": 1}, success_hook=object())),
    ("use_resource", lambda: Step("s", tpl(), parameters={"x": 1}, use_resource=object())),
    ("continue_on_error", lambda: Step("s", tpl(), parameters={"x": 1}, continue_on_error=True)),
    ("Dflow executors", lambda: Step("s", tpl(), parameters={"x": 1}, executor=object())),
    ("Argo expression", lambda: Step("s", tpl(), parameters={"x": "{{=1+1}}"})),
    ("Argo expression", lambda: Step("s", tpl(), parameters={"x": 1}, when="{{=true}}")),
    (
        "Argo dependency",
        lambda: dflow.Task("t", tpl(), parameters={"x": 1}, dependencies=["a.Failed || b"]),
    ),
    ("ShellOPTemplate", lambda: dflow.ShellOPTemplate(image="alpine", script="echo")),
    ("S3Artifact", lambda: dflow.S3Artifact(key="k")),
    ("Secret", lambda: dflow.Secret("s")),
    ("SlurmRemoteExecutor", lambda: dflow.SlurmRemoteExecutor(host="h")),
    ("DispatcherExecutor", lambda: _plugin("dispatcher", "DispatcherExecutor")(host="h")),
    ("LebesgueExecutor", lambda: _plugin("lebesgue", "LebesgueExecutor")(extra={})),
    ("HookStep", lambda: dflow.HookStep(template=tpl())),
    ("value_from_path", lambda: OutputParameter(value_from_path="/tmp/x")),
    ("OutputArtifact(path", lambda: OutputArtifact(path="/tmp/x")),
    ("Argo expression string", lambda: OutputParameter(value_from_expression="a ? b : c")),
    ("Argo expression", lambda: if_expression("{{=x}}", 1, 2)),
    ("parameters", lambda: Workflow("w", parameters={"p": 1})),
    ("on_exit", lambda: Workflow("w", on_exit=tpl())),
    ("context", lambda: Workflow("w", context=object())),
    ("context syntax", lambda: Workflow("w").__enter__()),
    ("superfunction", lambda: dflow.python.OP.superfunction(lambda: None)),
]


@pytest.mark.parametrize(
    ("feature", "make"), CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)]
)
def test_refused_with_the_feature_named(feature: str, make: Callable[[], Any]) -> None:
    with pytest.raises(UnsupportedFeatureError, match=re.escape(feature)):
        make()


def test_server_operations_are_refused() -> None:
    wf = Workflow("ops")
    wf.add(Step("echo", PythonOPTemplate(Echo)))
    wf.submit()
    wf.wait()
    for name in (
        "suspend",
        "resume",
        "retry",
        "resubmit",
        "delete",
        "to_yaml",
        "query_global_outputs",
    ):
        with pytest.raises(UnsupportedFeatureError, match=name):
            getattr(wf, name)()
    (step,) = wf.query_step()
    with pytest.raises(UnsupportedFeatureError, match="get_pod"):
        step.get_pod()


def test_hdf5_artifacts_are_refused() -> None:
    pytest.importorskip("dflow")
    from dflow.python import OP as PyOP
    from dflow.python import HDF5Datasets, OPIOSign

    class H5(PyOP):
        @classmethod
        def get_input_sign(cls) -> Any:
            return OPIOSign({"data": Artifact(str)})

        @classmethod
        def get_output_sign(cls) -> Any:
            from dflow.python import Artifact as PyArtifact

            return OPIOSign({"h5": PyArtifact(HDF5Datasets)})

        def execute(self, op_in: Any) -> Any:
            return {}

    with pytest.raises(UnsupportedFeatureError, match="HDF5Datasets"):
        PythonOPTemplate(H5)


def test_our_hdf5_artifacts_are_refused() -> None:
    from dflow_async.dflow.python import OP, HDF5Datasets, OPIOSign

    class H5(OP):
        @classmethod
        def get_input_sign(cls) -> Any:
            return OPIOSign({"h5": Artifact(HDF5Datasets)})

        @classmethod
        def get_output_sign(cls) -> Any:
            return OPIOSign({})

        def execute(self, op_in: Any) -> Any:
            return {}

    with pytest.raises(UnsupportedFeatureError, match=r"HDF5Datasets.*Artifact\(List\[Path\]\)"):
        PythonOPTemplate(H5)


def test_unsupported_error_is_also_not_implemented() -> None:
    assert issubclass(UnsupportedFeatureError, NotImplementedError)


def test_op_template_is_the_base_of_templates() -> None:
    # dpgen2 annotates with it (from dflow import OPTemplate): importable, and isinstance holds
    assert isinstance(tpl(), dflow.OPTemplate)
    assert isinstance(dflow.Steps("s"), dflow.OPTemplate)
    assert isinstance(dflow.DAG("d"), dflow.OPTemplate)
    assert not isinstance(Square, dflow.OPTemplate)
