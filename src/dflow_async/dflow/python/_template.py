"""Dflow's ``PythonOPTemplate`` and ``Slices``, as settings for a native Step.

In Dflow the template carries what, natively, a ``Step`` carries: slices, retries, timeout.
:meth:`PythonOPTemplate.step_settings` hands them to the compatibility ``Step``, which builds
the native step. Container settings (``image``, ``requests``/``limits``, ``envs``,
``node_selector``...) are kept in the step's ``resources`` for executors that place work (pods,
batch jobs); ``envs`` are also set while the OP runs locally. Settings that would make a local run
compute something else (volumes, sidecars, init containers, custom scripts) are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dflow_async._graph import RetryPolicy
from dflow_async._graph import Slices as _NativeSlices
from dflow_async._op import OP as _NativeOP
from dflow_async.dflow._adapt import AdaptOptions, adapt_foreign_op
from dflow_async.dflow._unsupported import refuse

__all__ = ["PythonOPTemplate", "Slices", "StepSettings", "upload_packages"]

#: Dflow ships these files to the pods; locally they are importable already.
upload_packages: list[Any] = []

#: a slices index: one ``{{item...}}`` placeholder
_ITEM = re.compile(r"^\s*\{\{\s*item[^{}]*\}\}\s*$")
#: ``int('{{item}}')``: a Python int() around a quoted placeholder, as dpgen2 writes slices
_INT_WRAPPER = re.compile(r"""^\s*int\(\s*(['"])(\{\{[^{}]*\}\})\1\s*\)\s*$""")


class Slices:
    """Dflow's ``Slices``: fan a step out over list inputs and stack the outputs.

    ``pool_size`` means, in Dflow, "run the slices of one group through a pool of this size";
    here the slices of a group run one after another, so it changes speed, not results, and is
    not passed on (the native ``pool_size`` caps concurrent attempts: ``Step(parallelism=)``).
    """

    def __init__(
        self,
        slices: str | None = None,
        input_parameter: list[str] | None = None,
        input_artifact: list[str] | None = None,
        output_parameter: list[str] | None = None,
        output_artifact: list[str] | None = None,
        sub_path: bool = False,
        group_size: int | None = None,
        shuffle: bool = False,
        random_seed: int = 0,
        pool_size: int | None = None,
        pool_timeout: int | None = None,
        register_first_only: bool = False,
        create_dir: bool = False,
        raise_for_group: bool = False,
    ) -> None:
        self.given_slices = slices
        self.input_parameter = list(input_parameter or [])
        self.input_artifact = list(input_artifact or [])
        self.output_parameter = list(output_parameter or [])
        self.output_artifact = list(output_artifact or [])
        self.sub_path = sub_path
        if slices is not None:
            self.slices = slices
        elif sub_path and group_size is None:
            self.slices = "{{item.order}}"
        else:
            self.slices = "{{item}}"
        self.group_size = group_size
        self.shuffle = shuffle  # regroups slices only: same results
        self.random_seed = random_seed
        self.pool_size = pool_size
        if pool_timeout is not None:
            refuse("Slices(pool_timeout=...)", "use PythonOPTemplate(timeout=...) per attempt")
        self.pool_timeout = pool_timeout
        self.register_first_only = register_first_only  # lineage only
        self.create_dir = create_dir  # every slice has its own work directory anyway
        self.raise_for_group = raise_for_group

    def to_native(
        self, with_param: Any, parallelism: int | None, extra_parameters: tuple[str, ...] = ()
    ) -> _NativeSlices:
        expr: Any = self.slices
        if isinstance(expr, str):
            # Dflow pastes the expression into the pod's Python code: dpgen2 writes
            # "int('{{item}}')" for items formatted by argo_sequence(format="%04d"). The
            # scheduler takes int() of the rendered index already, so the wrapper is dropped
            # (left in, the index "int('0000')" failed every slice).
            wrapped = _INT_WRAPPER.match(expr)
            expr = wrapped.group(2) if wrapped else expr
        if self.given_slices is None and self.sub_path and with_param is None:
            expr = None  # sub_path: slice i takes item i of the list artifact
        elif isinstance(expr, str) and not _ITEM.match(expr):
            # other Python ("{{item}} + 1", "[{{item}}]") would fail every slice at run time
            refuse(f"Slices({expr!r})", 'index slices with "{{item}}" or "int(\'{{item}}\')"')
        return _NativeSlices(
            expr,
            input_parameter=[*self.input_parameter, *extra_parameters],
            input_artifact=self.input_artifact,
            output_parameter=self.output_parameter,
            output_artifact=self.output_artifact,
            group_size=self.group_size,
            pool_size=parallelism,
            sub_path=self.sub_path,
            create_dir=self.create_dir,
        )


@dataclass
class StepSettings:
    """What a template contributes to a native Step."""

    template: Any
    slices: Any = None  # ours, or native Slices given to Step(slices=)
    retries: RetryPolicy | int = 0
    timeout: float | None = None
    resources: dict[str, Any] | None = None


_PYTHON = re.compile(r"^(.*/)?python[0-9.]*$")


class PythonOPTemplate:
    """Dflow's ``PythonOPTemplate(op_class, image=..., slices=..., retry_on_*=...)``."""

    def __init__(
        self,
        op_class: Any,
        image: str | None = None,
        command: str | list[str] | None = None,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[Any] | None = None,
        affinity: Any = None,
        output_artifact_save: dict[str, Any] | None = None,
        output_artifact_archive: dict[str, Any] | None = None,
        output_parameter_default: dict[str, Any] | None = None,
        input_artifact_prefix: dict[str, str] | None = None,
        input_artifact_slices: dict[str, str] | None = None,
        input_parameter_slices: dict[str, str] | None = None,
        output_artifact_slices: dict[str, str] | None = None,
        output_parameter_slices: dict[str, str] | None = None,
        output_artifact_global_name: dict[str, str] | None = None,
        output_parameter_global_name: dict[str, str] | None = None,
        slices: Slices | None = None,
        python_packages: list[Any] | None = None,
        timeout: int | None = None,
        retry_on_transient_error: int | None = None,
        retry_on_failure: int | None = None,
        retry_on_error: int | None = None,
        retry_on_failure_and_error: int | None = None,
        timeout_as_transient_error: bool = False,
        memoize_key: str | None = None,
        volumes: list[Any] | None = None,
        mounts: list[Any] | None = None,
        image_pull_policy: str | None = None,
        requests: dict[str, str] | None = None,
        limits: dict[str, str] | None = None,
        upload_dflow: bool = True,
        envs: dict[str, str] | None = None,
        init_containers: list[Any] | None = None,
        sidecars: list[Any] | None = None,
        tmp_root: str = "/tmp",
        pre_script: str = "",
        post_script: str = "",
        success_tag: bool = False,
        create_slice_dir: bool = False,
        skip_slice_input: bool = False,
    ) -> None:
        for feature, value, hint in (
            ("volumes", volumes, "steps run on the local filesystem"),
            ("mounts", mounts, "steps run on the local filesystem"),
            ("init_containers", init_containers, "run the preparation in an OP step"),
            ("sidecars", sidecars, "run the service outside the workflow"),
            ("output_artifact_save", output_artifact_save, "artifacts stay in the run store"),
            ("input_artifact_prefix", input_artifact_prefix, "use Slices"),
            ("input_artifact_slices", input_artifact_slices, "use Slices"),
            ("input_parameter_slices", input_parameter_slices, "use Slices"),
            ("output_artifact_slices", output_artifact_slices, "use Slices"),
            ("output_parameter_slices", output_parameter_slices, "use Slices"),
            ("pre_script", pre_script, "do the work in the OP"),
            ("post_script", post_script, "do the work in the OP"),
            ("skip_slice_input", skip_slice_input, "use Slices"),
        ):
            if value:
                refuse(f"PythonOPTemplate({feature}=...)", hint)
        commands = [command] if isinstance(command, str) else list(command or [])
        if commands and not (len(commands) == 1 and _PYTHON.match(commands[0])):
            refuse(f"PythonOPTemplate(command={command!r})", "OPs run in this Python")
        self.op_class = op_class
        self.slices = slices
        self.image = image
        self.command = commands or ["python3"]
        self.image_pull_policy = image_pull_policy
        self.requests = requests
        self.limits = limits
        self.envs = dict(envs or {})
        self.annotations = annotations
        self.labels = labels
        self.node_selector = node_selector
        self.tolerations = tolerations
        self.affinity = affinity
        self.output_artifact_archive = output_artifact_archive  # compression only
        self.output_parameter_default = dict(output_parameter_default or {})
        self.output_artifact_global_name = output_artifact_global_name
        self.output_parameter_global_name = output_parameter_global_name
        self.python_packages = python_packages  # importable here already
        self.timeout = timeout
        self.retry_on_transient_error = retry_on_transient_error
        self.retry_on_failure = retry_on_failure
        self.retry_on_error = retry_on_error
        self.retry_on_failure_and_error = retry_on_failure_and_error
        self.timeout_as_transient_error = timeout_as_transient_error
        self.memoize_key = memoize_key  # not memoized: the step runs (same results)
        self.tmp_root = tmp_root
        self.create_slice_dir = create_slice_dir
        self.op = self.native_op(False)  # reads the signs now: errors show at definition

    def native_op(self, key_port: bool, origins: tuple[str, ...] = ()) -> Any:
        """The OP the native step runs, with hidden inputs: ``dflow_key`` when the step has a
        key, and the unmaterialised value of the artifacts in ``origins``."""
        if isinstance(self.op_class, _NativeOP):
            return self.op_class
        if isinstance(self.op_class, type) and issubclass(self.op_class, _NativeOP):
            return self.op_class()
        options = AdaptOptions(
            envs=tuple(sorted(self.envs.items())),
            output_defaults=tuple(self.output_parameter_default.items()),
            key_port=key_port,
            origin_ports=origins,
        )
        return adapt_foreign_op(self.op_class, options)

    def retry_policy(self) -> RetryPolicy | int:
        """Dflow's retry settings as a native policy (no back-off, as on Argo).

        ``retry_on_transient_error`` retries what exits with code 1 in Dflow's pod script:
        TransientError and any other exception (not FatalError); timeouts too with
        ``timeout_as_transient_error``.
        """
        choices = (
            (
                self.retry_on_transient_error,
                {"transient", "user"} | ({"timeout"} if self.timeout_as_transient_error else set()),
            ),
            (self.retry_on_failure, {"transient", "user", "timeout"}),
            (self.retry_on_error, {"infra"}),
            (self.retry_on_failure_and_error, {"transient", "user", "timeout", "infra"}),
        )
        for limit, kinds in choices:
            if limit is not None:
                return RetryPolicy(
                    max_retries=int(limit), backoff=0.0, jitter=0.0, retry_on=frozenset(kinds)
                )
        return 0

    def resources(self) -> dict[str, Any]:
        fields = {
            "image": self.image,
            "image_pull_policy": self.image_pull_policy,
            "command": self.command,
            "requests": self.requests,
            "limits": self.limits,
            "envs": self.envs or None,
            "node_selector": self.node_selector,
            "tolerations": self.tolerations,
            "affinity": self.affinity,
            "labels": self.labels,
            "annotations": self.annotations,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def step_settings(
        self, key_port: bool, slices: Slices | None, origins: tuple[str, ...] = ()
    ) -> StepSettings:
        return StepSettings(
            template=self.native_op(key_port, origins),
            slices=slices if slices is not None else self.slices,
            retries=self.retry_policy(),
            timeout=float(self.timeout) if self.timeout is not None else None,
            resources=self.resources(),
        )

    def __repr__(self) -> str:
        name = getattr(self.op_class, "__name__", type(self.op_class).__name__)
        return f"<PythonOPTemplate {name}>"
