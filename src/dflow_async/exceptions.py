"""Every error dflow-async raises on purpose, in one tree.

::

    DflowAsyncError
    ├── WorkflowValidationError      the workflow cannot run; lists every problem found
    ├── SignatureError               an OP's inputs/outputs do not match its sign (also a TypeError)
    ├── ArtifactError                an artifact is missing, escapes its work dir, or is corrupt
    ├── ExecutorNotFoundError        no usable executor of that name (also a LookupError)
    ├── ExecutorClosedError          the executor was used outside ``async with``
    ├── ExecutorStartError           an executor could not start; the run started no step
    ├── WorkflowFailedError          ``Result.raise_for_status()`` on a failed run
    └── StepError                    raised inside OPs to steer retries
        ├── TransientError           retried under the step's retry policy
        └── FatalError               never retried

Messages say what happened, to which step and port, and what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ArtifactError",
    "DflowAsyncError",
    "EditedInputWarning",
    "EditedOpWarning",
    "ExecutorClosedError",
    "ExecutorNotFoundError",
    "ExecutorStartError",
    "FatalError",
    "SignatureError",
    "StepError",
    "TransientError",
    "WorkflowFailedError",
    "WorkflowValidationError",
]


class DflowAsyncError(Exception):
    """Base of every error raised by dflow-async itself."""


class WorkflowValidationError(DflowAsyncError):
    """The workflow was rejected before any step ran.

    ``problems`` holds one sentence per problem; the message lists them all, so a user
    fixes everything in one round instead of one error per run.
    """

    def __init__(self, workflow: str, problems: Sequence[str]) -> None:
        self.workflow = workflow
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(
            f"workflow {workflow!r} cannot run, {count} {noun} found (no step was started):\n"
            f"{lines}"
        )


class SignatureError(DflowAsyncError, TypeError):
    """An OP received or returned values that do not match its input/output sign."""


class ArtifactError(DflowAsyncError):
    """An artifact could not be committed or fetched."""


class ExecutorNotFoundError(DflowAsyncError, LookupError):
    """No usable executor is registered under the requested name: none is installed, or its
    plugin fails to load or to be created."""


class ExecutorClosedError(DflowAsyncError, RuntimeError):
    """An executor was used before ``async with`` entered it or after it closed."""


class ExecutorStartError(DflowAsyncError, RuntimeError):
    """An executor could not start (a cluster it cannot reach, a backend that fails to
    launch workers): the run started no step and can be resumed once it is fixed."""


class WorkflowFailedError(DflowAsyncError):
    """Raised by ``Result.raise_for_status()`` when a run did not succeed."""


class StepError(DflowAsyncError):
    """Base for errors an OP raises to tell the scheduler how to treat its failure."""


class TransientError(StepError):
    """A failure worth retrying (a flaky network, a busy license server...)."""


class FatalError(StepError):
    """A failure that retrying cannot fix; the step fails at once."""


class EditedOpWarning(UserWarning):
    """A run was resumed after some of its OPs' code changed: the steps that finished keep the
    results of the old code."""


class EditedInputWarning(UserWarning):
    """A run was resumed after some of its local input files changed: steps that had not run
    yet read them as they are now."""
