"""Structured step events through structlog, quiet unless the application asks for them.

Events go to the stdlib logger ``dflow_async`` (structlog renders them), so they follow the
application's logging setup; a library that prints on its own is a library nobody embeds.
``configure_logging()`` is the one-liner for scripts.
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any

import structlog

from dflow_async._records import StepRecord

__all__ = ["EventHook", "check_hook", "configure_logging", "logging_hook", "safe"]

#: ``hook(kind, record, fields)``: kind is started (also for each retry's attempt), succeeded,
#: failed, retrying, skipped or cancelled, or unit_done when an attempt of a fan-out succeeded
#: (``fields["slices"]`` slices of its ``fields["of"]``); ``fields`` hold the event's own facts
#: (``phase``, ``attempt``, and ``error``/``kind``/``delay``/``reason`` where they apply);
#: ``record`` is the step's live :class:`StepRecord`, which may have moved on by the time a
#: hook runs (hooks run on the event loop, in order, while attempts go on in worker threads).
EventHook = Callable[[str, StepRecord, dict[str, Any]], None]

_stdlib_logger = logging.getLogger("dflow_async")
_stdlib_logger.addHandler(logging.NullHandler())


def _logger() -> Any:
    return structlog.wrap_logger(
        _stdlib_logger,
        processors=[
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.KeyValueRenderer(key_order=["event", "run_id", "step", "key"]),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def logging_hook(run_id: str) -> EventHook | None:
    """A hook that logs step events, or None when nobody listens (zero cost per step)."""
    if not _stdlib_logger.isEnabledFor(logging.INFO):
        return None
    log = _logger().bind(run_id=run_id)

    def hook(kind: str, record: StepRecord, fields: dict[str, Any]) -> None:
        if kind == "unit_done":  # a line per slice would drown the steps' own
            return
        method = log.warning if kind in ("failed", "retrying") else log.info
        extra = {k: v for k, v in fields.items() if v is not None}
        # the 0-based index of the step's latest attempt, as started/retrying events give it
        extra.setdefault("attempt", max(record.attempts - 1, 0))
        if record.duration is not None and kind in ("succeeded", "failed"):
            extra["duration"] = round(record.duration, 6)
        method(f"step_{kind}", step=record.path, key=record.key, **extra)

    return hook


def safe(hook: EventHook) -> EventHook:
    """A hook whose exceptions are logged, not raised: a broken progress bar or metrics
    callback must not fail the workflow it watches. Its first failure is also a warning: the
    ``dflow_async`` logger is silent unless the application configures it, and a hook that
    fails unseen is a dashboard that quietly stops."""
    warned = False

    def call(kind: str, record: StepRecord, fields: dict[str, Any]) -> None:
        nonlocal warned
        try:
            hook(kind, record, fields)
        except Exception as exc:
            _stdlib_logger.exception("event hook %r failed on %s of %s", hook, kind, record.path)
            if not warned:
                warned = True
                warnings.warn(
                    f"on_event hook {hook!r} raised {type(exc).__name__}: {exc} (on {kind} of "
                    f"step {record.path!r}); the run goes on, and later failures of this hook "
                    "are logged to the 'dflow_async' logger only",
                    RuntimeWarning,
                    stacklevel=2,
                )

    return call


def check_hook(hook: Any) -> None:
    """Refuse, before the run, a hook that could never work: an ``async def`` (hooks are
    called, not awaited) or one that does not take ``(kind, record, fields)``."""
    if not callable(hook):
        raise TypeError(f"on_event= takes callables, got {type(hook).__name__} {hook!r:.60}")
    target = hook if inspect.isroutine(hook) else type(hook).__call__
    if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(target):
        raise TypeError(
            f"on_event hook {hook!r} is an async function: hooks are called on the event loop, "
            "not awaited; use a plain function (it may schedule async work with "
            "asyncio.get_running_loop().create_task(...))"
        )
    try:
        inspect.signature(hook).bind("started", None, {})
    except TypeError as exc:
        raise TypeError(f"on_event hook {hook!r} must take (kind, record, fields): {exc}") from None
    except ValueError:  # no signature to read (some builtins): it is called and seen
        pass


def configure_logging(level: int | str = "INFO", stream: Any = None) -> None:
    """Print step events to ``stream`` (stderr by default) at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for h in list(_stdlib_logger.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.NullHandler):
            _stdlib_logger.removeHandler(h)
    _stdlib_logger.addHandler(handler)
    _stdlib_logger.setLevel(level)
