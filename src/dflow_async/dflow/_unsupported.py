"""Refusing Argo-only features loudly.

Dflow exposes a lot of Kubernetes and Argo machinery (secrets, sidecars, lifecycle hooks,
volumes...). Where a feature has no local meaning *and* ignoring it could change what a
workflow computes, the compatibility layer raises :class:`UnsupportedFeatureError` naming the
feature, instead of running something different from what the user wrote.
"""

from __future__ import annotations

from typing import Any, NoReturn

from dflow_async.exceptions import DflowAsyncError

__all__ = ["UnsupportedFeatureError", "refuse", "refusing_class"]


class UnsupportedFeatureError(DflowAsyncError, NotImplementedError):
    """A Dflow feature that dflow-async does not run (it is Argo/Kubernetes-only)."""


def refuse(feature: str, hint: str = "") -> NoReturn:
    """Raise for ``feature``; ``hint`` says what to do instead."""
    text = f"{feature} is not supported by dflow-async's Dflow compatibility layer"
    if hint:
        text += f": {hint}"
    raise UnsupportedFeatureError(text)


def refusing_class(name: str, hint: str) -> type:
    """A stand-in for a Dflow class that refuses to be instantiated.

    Importing the name works (so ``from dflow_async.dflow import S3Artifact`` does not break a
    module that only uses it on some code path); using it raises.
    """

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        refuse(f"dflow.{name}", hint)

    return type(name, (), {"__init__": __init__, "__doc__": f"Not supported: {hint}"})
