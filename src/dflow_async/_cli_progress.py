"""What ``dflow-async run`` shows: a live step counter while the run goes, a summary after.

The event hook only bumps counters (it runs on the scheduler's hot path); rich's refresh
thread reads them a few times a second.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from dflow_async._records import StepRecord
from dflow_async._workflow import Result

__all__ = ["BIG_RUN", "RunProgress", "format_duration", "render_summary"]

#: above this many records the summary counts phases and lists failed steps only
BIG_RUN = 50
ERROR_WIDTH = 70

PHASE_STYLE = {
    "Succeeded": "green",
    "Failed": "bold red",
    "Skipped": "yellow",
    "Cancelled": "magenta",
    "Running": "cyan",
    "Pending": "dim",
}
PHASE_ORDER = ("Succeeded", "Failed", "Skipped", "Cancelled", "Running", "Pending")


class RunProgress:
    """An ``on_event`` hook plus the transient live display it feeds (on stderr)."""

    def __init__(self, workflow: str, console: Console, *, enabled: bool = True) -> None:
        self.workflow = workflow
        self.console = console
        self.enabled = enabled
        self.done = self.running = self.failed = self.skipped = self.cancelled = 0
        self.retries = 0
        self.fanouts: dict[str, list[int]] = {}  # running fan-out -> [slices done, of]
        self.last = ""
        self.started = time.monotonic()
        self._spinner = Spinner("dots", style="cyan")
        self._live: Live | None = None

    # -- the hook (keep it cheap: called once per step event) ---------------------------

    def __call__(self, kind: str, record: StepRecord, fields: dict[str, Any]) -> None:
        if kind == "unit_done":
            done = self.fanouts.setdefault(record.path, [0, fields["of"]])
            done[0] += fields["slices"]
            return
        if kind == "started":
            self.running += 1
        elif kind == "retrying":
            self.retries += 1
            self.running -= 1  # its next attempt's "started" counts it again
        else:
            if record.start is not None and kind != "pending":
                self.running -= 1  # it was counted as running when it started
            self.fanouts.pop(record.path, None)
            if kind == "succeeded":
                self.done += 1
            elif kind == "failed":
                self.failed += 1
            elif kind == "skipped":
                self.skipped += 1
            elif kind == "cancelled":
                self.cancelled += 1
        self.last = record.path

    # -- the display ----------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __rich__(self) -> RenderableType:
        line = Text.assemble(
            (f"{self.workflow}  ", "bold"),
            (f"{self.done} done", "green"),
            "  ",
            (f"{self.running} running", "cyan"),
            "  ",
            (f"{self.failed} failed", "bold red" if self.failed else "dim"),
            "  ",
            (f"{self.skipped} skipped", "yellow" if self.skipped else "dim"),
        )
        if self.fanouts:  # a fan-out's steps are one each: its slices show how far it is
            counts = list(self.fanouts.values())
            done, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
            line.append(f"  slices {done}/{total}", "cyan")
        if self.retries:
            line.append(f"  {self.retries} retries", "magenta")
        line.append(f"  {format_duration(self.elapsed)}", "dim")
        if self.last:
            line.append(f"  {self.last}", "dim italic")
        line.truncate(max(self.console.width - 3, 20), overflow="ellipsis")
        self._spinner.update(text=line)
        return self._spinner

    def __enter__(self) -> RunProgress:
        self.started = time.monotonic()
        if self.enabled:
            self._live = Live(self, console=self.console, transient=True, refresh_per_second=8)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


def _short_error(error: str | None, width: int = ERROR_WIDTH) -> str:
    if not error:
        return ""
    flat = " ".join(error.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _steps_table(records: list[StepRecord], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("step", no_wrap=True)
    table.add_column("key", overflow="fold")
    table.add_column("phase", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("last error", overflow="fold", ratio=1)
    for rec in records:
        table.add_row(
            Text(rec.path),
            Text(rec.key or ""),
            Text(rec.phase, PHASE_STYLE.get(rec.phase, "")),
            str(rec.attempts),
            format_duration(rec.duration),
            Text(_short_error(rec.error), "red"),
        )
    return table


def render_summary(result: Result, elapsed: float, *, quiet: bool = False) -> RenderableType:
    """The table after a run: every step, or phase counts and failed steps for big runs.

    ``quiet``: no tables, only the failed steps' errors and the status lines."""
    records = result.records
    parts: list[RenderableType] = []
    if quiet:
        for rec in records:
            if rec.phase == "Failed":
                parts.append(
                    Text.assemble(
                        ("✗ ", "bold red"), f"{rec.path}: ", (_short_error(rec.error, 200), "red")
                    )
                )
    elif len(records) <= BIG_RUN:
        if records:
            parts.append(_steps_table(records))
    else:
        counts: Counter[str] = Counter(rec.phase for rec in records)
        table = Table(title=f"{len(records)} steps", title_justify="left", header_style="bold")
        table.add_column("phase")
        table.add_column("steps", justify="right")
        for phase in (*PHASE_ORDER, *sorted(set(counts) - set(PHASE_ORDER))):
            if counts.get(phase):
                table.add_row(Text(phase, PHASE_STYLE.get(phase, "")), str(counts[phase]))
        parts.append(table)
        failed = [rec for rec in records if rec.phase == "Failed"]
        if failed:
            parts.append(_steps_table(failed, title="failed steps"))
    ok = result.status == "Succeeded"
    parts.append(
        Text.assemble(
            ("✓ " if ok else "✗ ", "bold green" if ok else "bold red"),
            f"workflow {result.name!r} ",
            (result.status.lower(), "bold green" if ok else "bold red"),
            f" in {format_duration(elapsed)}",
        )
    )
    parts.append(Text.assemble(("run id:  ", "dim"), result.run_id))
    parts.append(Text.assemble(("run dir: ", "dim"), str(result.run_dir)))
    return Group(*parts)
