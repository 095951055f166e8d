"""CLI commands about runs that exist: resume, list, get, logs, artifacts, cache."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from dflow_async._cli_progress import format_duration
from dflow_async._journal import JournalError
from dflow_async._records import StepRecord
from dflow_async._runs import Run, list_runs
from dflow_async._store import ArtifactStore
from dflow_async.exceptions import ArtifactError, ExecutorStartError, WorkflowValidationError

__all__ = ["register"]

_PHASE_STYLE = {
    "Succeeded": "green",
    "Failed": "red",
    "Running": "cyan",
    "Interrupted": "yellow",
    "Skipped": "dim",
    "Cancelled": "yellow",
    "Pending": "dim",
}


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True, highlight=False).print(Text(f"error: {message}", style="bold red"))
    return typer.Exit(code)


StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="PATH|URL",
        help="The store the workflow was given (Workflow(store=...)); default: "
        "$DFLOW_ASYNC_HOME, else ./.dflow-async.",
    ),
]


def _open(run_id: str, store: str | None) -> Run:
    try:
        return Run.open(run_id, store=store)
    except JournalError as exc:
        raise _fail(str(exc)) from None


def resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue.")],
    executor: Annotated[
        str | None,
        typer.Option(
            "--executor", "-e", help="Default executor for the steps left (default: the run's)."
        ),
    ] = None,
    parallelism: Annotated[
        int | None,
        typer.Option(
            "--parallelism", "-p", min=1, help="Max concurrent steps (default: the run's)."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    store: StoreOption = None,
) -> None:
    """Continue an interrupted run: finished steps keep their outputs and do not run again;
    the rest runs with the parameters, executor and parallelism the run was started with."""
    from dflow_async._cli_progress import RunProgress, render_summary
    from dflow_async._workflow import runs_home
    from dflow_async.cli import CliError, WorkflowChoiceError, cli_warnings, load_workflow

    run = _open(run_id, store)
    source = run.meta.get("source", "")
    from_python = f"resume it from Python, where the workflow is built: wf.run(resume={run_id!r})"
    if not source:
        raise _fail(f"run {run_id} does not record the file it was started from; {from_python}")
    try:
        # "FILE.py:OBJECT", or the script that ran it: its one Workflow, or the one of that name
        wf = load_workflow(source, named=run.workflow)
    except WorkflowChoiceError as exc:
        defines = (
            f"several Workflow objects at module level ({', '.join(exc.found)}), not one "
            f"named {run.workflow!r}"
            if exc.found
            else "no Workflow object at module level"
        )
        raise _fail(
            f"run {run_id} was started from {source}, which defines {defines}, so `dflow-async "
            f"resume` cannot build the workflow again; {from_python}"
        ) from None
    except CliError as exc:
        raise _fail(f"cannot load {source!r}, which run {run_id} was started from: {exc}") from None
    if store is not None and runs_home(store).absolute() != wf.store_path().absolute():
        wf.store = store  # where the run was found, whatever the file says today
    err = Console(stderr=True)
    progress = RunProgress(wf.name, err, enabled=not quiet and err.is_terminal)
    try:
        with progress, cli_warnings():
            result = wf.run(
                resume=run_id, executor=executor, parallelism=parallelism, on_event=progress
            )
    except (WorkflowValidationError, JournalError, ExecutorStartError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print(Text(f"interrupted: run {run_id} was cancelled", style="bold yellow"))
        raise typer.Exit(130) from None
    Console(highlight=False).print(render_summary(result, progress.elapsed, quiet=quiet))
    raise typer.Exit(0 if result.status == "Succeeded" else 1)


def list_(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show the newest N runs.")] = 20,
    store: StoreOption = None,
) -> None:
    """Runs under ./.dflow-async (or $DFLOW_ASYNC_HOME, or --store): status, start, duration."""
    runs = list_runs(store=store)[-limit:]
    table = Table(box=None)
    table.add_column("run id", no_wrap=True)  # users copy it into the next command
    for name in ("workflow", "status", "started", "duration", "steps"):
        table.add_column(name)
    for run in runs:
        started = run.created
        ended = run.ended
        table.add_row(
            run.run_id,
            run.workflow,
            Text(run.status, style=_PHASE_STYLE.get(run.status, "")),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "",
            format_duration(ended - started) if started and ended else "",
            str(run.step_count),
        )
    Console(highlight=False).print(table if runs else "no runs here")


def get(run_id: Annotated[str, typer.Argument()], store: StoreOption = None) -> None:
    """The run's steps as a tree, with phases, keys, attempts and durations."""
    run = _open(run_id, store)
    tree = Tree(Text.assemble((run.run_id, "bold"), "  ", _phase(run.status), f"  {run.workflow}"))
    nodes: dict[str, Tree] = {"": tree}
    # parents before children, siblings in start order
    for rec in sorted(run.records, key=lambda r: (r.path.count("/"), r.start or 0.0)):
        parent_path = rec.path.rpartition("/")[0]
        if "[" in rec.name and rec.path.endswith("]"):
            parent_path = rec.path.rpartition("[")[0]
        parent = nodes.get(parent_path, tree)
        nodes[rec.path] = parent.add(_line(rec))
    Console(highlight=False).print(tree)


def logs(
    run_id: Annotated[str, typer.Argument()],
    step: Annotated[str, typer.Argument(help="Step name, path or key.")],
    store: StoreOption = None,
) -> None:
    """Print the captured stdout/stderr of every attempt of a step."""
    run = _open(run_id, store)
    records = run.query_step(name=step) or run.query_step(key=step)
    if not records:
        raise _fail(f"run {run_id} has no step named {step!r} (by name, path or key)")
    out = Console(highlight=False)
    for rec in records:
        for workdir in rec.workdirs or []:
            log = Path(workdir + ".log")
            out.print(Text(f"==> {rec.path} ({attempt_label(workdir)}) <==", style="bold"))
            text = (log.read_text(errors="replace") if log.exists() else "") or "(no output)"
            # as Text: a log is no rich markup ("[/x]" in it raised MarkupError)
            out.print(Text(text), end="" if text.endswith("\n") else "\n")


_SLICE_DIR = re.compile(r"s\d+")


def attempt_label(workdir: str) -> str:
    """Which attempt a work dir is: ``a0``, or ``s3/a0`` for a slice's (the slices of a
    fan-out step share its record, so ``a0`` alone would not tell them apart)."""
    path = Path(workdir)
    if _SLICE_DIR.fullmatch(path.parent.name):
        return f"{path.parent.name}/{path.name}"
    return path.name


def artifacts_download(
    run_id: Annotated[str, typer.Argument()],
    step: Annotated[str, typer.Argument(help="Step name, path or key.")],
    name: Annotated[str, typer.Argument(help="Output artifact name.")],
    dest: Annotated[Path, typer.Argument(help="Directory to download into.")],
    store: StoreOption = None,
) -> None:
    """Copy a step's output artifact into DEST."""
    from dflow_async._artifacts import download_artifact

    run = _open(run_id, store)
    records = run.query_step(name=step) or run.query_step(key=step)
    if not records:
        raise _fail(f"run {run_id} has no step {step!r}")
    rec = records[0]
    if name not in rec.outputs.artifacts:
        have = sorted(rec.outputs.artifacts) or "none"
        raise _fail(f"step {rec.path!r} has no output artifact {name!r} (it has: {have})")
    try:
        # copied from where it was produced when that is here, else fetched from the store
        # (a remote store's credentials come from the environment, as s3fs reads them)
        url = run.meta.get("store")
        artifacts = ArtifactStore(url) if url else None
        paths = download_artifact(rec.outputs.artifacts[name], dest, store=artifacts)
    except ArtifactError as exc:
        raise _fail(str(exc)) from None
    for p in paths:
        if p is not None:
            typer.echo(str(p))
    holes = [i for i, p in enumerate(paths) if p is None]
    if holes:  # a fan-out's slices that failed or produced nothing
        typer.echo(
            f"skipped {len(holes)} of {len(paths)} entries that are None (slices that failed "
            f"or produced nothing): {holes}",
            err=True,
        )


def cache_clear(store: StoreOption = None) -> None:
    """Forget every cached step result in this store."""
    from dflow_async._cache import StepCache
    from dflow_async._workflow import runs_home

    count = StepCache(runs_home(store).absolute() / "cache").clear()
    typer.echo(f"removed {count} cached step results")


def _phase(phase: str) -> Text:
    return Text(phase, style=_PHASE_STYLE.get(phase, ""))


def _line(rec: StepRecord) -> Text:
    parts: list[str | tuple[str, str] | Text] = [(rec.name, "bold"), "  ", _phase(rec.phase)]
    if rec.key:
        parts.append(f"  key={rec.key}")
    if rec.slices is not None:  # a fan-out's attempts are its slices' (or groups'), summed
        failed = f" ({rec.failed_slices} failed)" if rec.failed_slices else ""
        parts.append(f"  slices={rec.slices}{failed} attempts={rec.attempts}")
    elif rec.attempts:
        parts.append(f"  attempts={rec.attempts}")
    if rec.duration is not None:
        parts.append(f"  {format_duration(rec.duration)}")
    if rec.cached:
        parts.append("  (cached)")
    if rec.phase == "Failed" and rec.error:
        parts.append(Text(f"  {rec.error.splitlines()[0][:100]}", style="red"))
    return Text.assemble(*parts)


def register(app: typer.Typer) -> None:
    app.command()(resume)
    app.command("list")(list_)
    app.command()(get)
    app.command()(logs)
    artifacts = typer.Typer(help="Artifacts of runs.", no_args_is_help=True)
    artifacts.command("download")(artifacts_download)
    app.add_typer(artifacts, name="artifacts")
    cache = typer.Typer(help="The step cache.", no_args_is_help=True)
    cache.command("clear")(cache_clear)
    app.add_typer(cache, name="cache")
