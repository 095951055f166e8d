"""The ``dflow-async`` command line: run a workflow file, draw its graph, list executors.

``FILE.py[:OBJECT]`` is loaded as a module named after the file (not ``__main__``, so the
file's own ``if __name__ == "__main__": wf.run()`` stays quiet), with the file's directory
first on ``sys.path``; worker processes import OPs from it by that name.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import secrets
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from dflow_async import __version__
from dflow_async._compile import CompiledTemplate, as_networkx
from dflow_async._workflow import Workflow
from dflow_async.exceptions import (
    EditedInputWarning,
    EditedOpWarning,
    ExecutorStartError,
    WorkflowValidationError,
)

__all__ = ["app", "load_workflow", "main", "parse_params", "render_graph"]

app = typer.Typer(
    name="dflow-async",
    help="Run dflow-async workflows from Python files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

TARGET_HELP = (
    "A Python file defining a Workflow (dflow_async or dflow_async.dflow); FILE.py:NAME picks "
    "the object named NAME."
)

WORKFLOW_CLASSES = "dflow_async.Workflow (or dflow_async.dflow.Workflow)"


class CliError(Exception):
    """A usage problem: printed without a traceback, exit code 2."""


class WorkflowChoiceError(CliError):
    """``FILE.py`` without ``:OBJECT`` defines no Workflow at module level, or several."""

    def __init__(self, message: str, found: list[str]) -> None:
        super().__init__(message)
        self.found = found


@contextmanager
def cli_warnings() -> Iterator[None]:
    """The library's warnings to the user (a resume's EditedOpWarning, EditedInputWarning)
    as the command's own messages: Python would point them at a line of typer, the caller
    the library sees from inside the command."""
    original = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, EditedOpWarning | EditedInputWarning):
            _stderr().print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)
        else:
            original(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 2) -> NoReturn:
    _stderr().print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(code)


# ---------------------------------------------------------------- loading FILE.py[:OBJECT]


def _split_target(target: str) -> tuple[str, str | None]:
    head, sep, tail = target.rpartition(":")
    if sep and head and all(part.isidentifier() for part in tail.split(".")):
        return head, tail
    if sep and head and not tail:
        raise CliError(f"{target!r}: nothing after ':'; write FILE.py:NAME")
    return target, None


def _module_name(path: Path) -> str:
    """The file's stem when that is importable and free (worker processes can then import
    the OPs by reference), else a private name that cannot shadow a real module."""
    stem = path.stem
    if stem.isidentifier() and not keyword.iskeyword(stem):
        loaded = sys.modules.get(stem)
        if loaded is None or getattr(loaded, "__file__", None) == str(path):
            return stem
    name = "_dflow_async_file_" + re.sub(r"\W", "_", stem)
    _stderr().print(
        Text(
            f"note: {path.name} is loaded as module {name!r} because {stem!r} is "
            "not a free module name; executors in other processes cannot import its OPs "
            "(rename the file to fix that)",
            style="yellow",
        ),
        soft_wrap=True,
    )
    return name


def load_module(path: Path) -> ModuleType:
    """Execute ``path`` as a module registered in ``sys.modules`` (before it runs)."""
    directory = str(path.parent)
    if not sys.path or sys.path[0] != directory:
        sys.path.insert(0, directory)
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != str(path):
            tb = tb.tb_next  # drop the loader's frames: show the user's code only
        text = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
        raise CliError(f"{path.name} raised an exception while loading:\n{text}") from None
    return module


def load_workflow(target: str, *, named: str | None = None) -> Workflow:
    """The Workflow named by ``FILE.py[:OBJECT]`` (the file's only Workflow without OBJECT;
    or, of several, the only one whose name is ``named``)."""
    file, obj = _split_target(target)
    path = Path(file).expanduser()
    if not path.is_file():
        raise CliError(f"{file}: no such file")
    path = path.resolve()
    module = load_module(path)
    if obj is not None:
        found: Any = module
        try:
            for part in obj.split("."):
                found = getattr(found, part)
        except AttributeError:
            names = _workflows_in(module)
            hint = f" (Workflow objects in it: {', '.join(names)})" if names else ""
            raise CliError(f"{path.name} has no attribute {obj!r}{hint}") from None
        if not _is_workflow(found):
            cls = type(found)
            raise CliError(
                f"{path.name}:{obj} is a {cls.__module__}.{cls.__qualname__}, not a "
                f"{WORKFLOW_CLASSES}"
            )
        return _native(found, f"{path}:{obj}", path)
    names = _workflows_in(module)
    if len(names) > 1 and named is not None:
        chosen = [n for n in names if getattr(getattr(module, n), "name", None) == named]
        names = chosen if len(chosen) == 1 else names
    if len(names) != 1:
        found_text = f"found {len(names)}: {', '.join(names)}" if names else "found none"
        example = f"{file}:{names[0] if names else 'NAME'}"
        raise WorkflowChoiceError(
            f"{path.name} must define exactly one {WORKFLOW_CLASSES} at module level "
            f"({found_text}); name the one to use as FILE.py:NAME, e.g. {example}",
            names,
        )
    return _native(getattr(module, names[0]), f"{path}:{names[0]}", path)


def _is_workflow(value: Any) -> bool:
    if isinstance(value, Workflow):
        return True
    # a Dflow-compatibility Workflow: its module is loaded if the file used it (the command
    # line need not import the compatibility layer for native workflows)
    compat = sys.modules.get("dflow_async.dflow._workflow")
    return compat is not None and isinstance(value, compat.Workflow)


def _native(value: Any, source: str, path: Path) -> Workflow:
    """The native workflow ``value`` is, or the one a compatibility Workflow submits."""
    if not isinstance(value, Workflow):
        try:
            value = value.native_workflow()
        except ValueError as exc:  # no steps added
            raise CliError(f"{path.name}: {exc}") from None
    value.source = source  # recorded in the journal for `dflow-async resume`
    wf: Workflow = value
    return wf


def _workflows_in(module: ModuleType) -> list[str]:
    """Names of the distinct Workflow objects among the module's globals (first name wins)."""
    seen: dict[int, str] = {}
    for name, value in vars(module).items():
        if _is_workflow(value):
            seen.setdefault(id(value), name)
    return list(seen.values())


def _load_or_exit(target: str) -> Workflow:
    try:
        return load_workflow(target)
    except CliError as exc:
        _fail(str(exc))


# ---------------------------------------------------------------- commands


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dflow-async {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Run dflow-async workflows from Python files."""


@app.command()
def run(
    target: Annotated[str, typer.Argument(metavar="FILE.py[:OBJECT]", help=TARGET_HELP)],
    executor: Annotated[
        str | None, typer.Option("--executor", "-e", help="Default executor for OP steps.")
    ] = None,
    parallelism: Annotated[
        int | None, typer.Option("--parallelism", "-p", min=1, help="Max concurrent steps.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-P",
            metavar="NAME=VALUE",
            help="A parameter of the run (repeat for more): VALUE is read as JSON when it is "
            'JSON (3, true, [1, 2], "3"), else taken as a string.',
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live progress and no step table.")
    ] = False,
) -> None:
    """Run a workflow with live progress, then print a summary (exit 1 when it fails)."""
    from dflow_async._cli_progress import RunProgress, render_summary

    try:
        parameters = parse_params(param or [])
    except CliError as exc:
        _fail(str(exc))
    wf = _load_or_exit(target)
    wf._parameters_option = "--param"  # what validation messages tell to use
    err = _stderr()
    progress = RunProgress(wf.name, err, enabled=not quiet and err.is_terminal)
    run_id = f"{wf.name}-{secrets.token_hex(3)}"
    try:
        with progress, cli_warnings():
            result = wf.run(
                parameters=parameters or None,
                executor=executor,
                parallelism=parallelism,
                run_id=run_id,
                on_event=progress,
            )
    except WorkflowValidationError as exc:
        _fail(str(exc))
    except ExecutorStartError as exc:  # nothing ran; the message says how to resume
        plain = f"`dflow-async resume {run_id}`"
        _fail(str(exc).replace(plain, f"`{resume_command(wf, run_id)}`"))
    except KeyboardInterrupt:
        err.print(
            Text(
                f"interrupted: run {run_id} was cancelled; `{resume_command(wf, run_id)}` "
                "goes on with the steps that did not finish",
                style="bold yellow",
            ),
            soft_wrap=True,  # a command to copy: not broken across lines
        )
        raise typer.Exit(130) from None
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = max(out.width, 120)  # logs and pipes: room for paths and errors
    out.print(render_summary(result, progress.elapsed, quiet=quiet))
    raise typer.Exit(0 if result.status == "Succeeded" else 1)


def resume_command(wf: Workflow, run_id: str) -> str:
    """The command that resumes ``run_id`` from here: with ``--store`` when the workflow's
    runs are not where the command looks by default."""
    import shlex

    from dflow_async._workflow import default_store

    command = f"dflow-async resume {run_id}"
    home = wf.store_path().absolute()
    if home != default_store().absolute():
        command += f" --store {shlex.quote(str(home))}"
    return command


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``--param NAME=VALUE`` options as run parameters: VALUE as JSON when it parses (``3``,
    ``true``, ``[1, 2]``, ``{"a": 1}``, ``"3"`` for the string), else the string as it is."""
    import json

    parameters: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(f"--param takes NAME=VALUE, got {pair!r}")
        if name in parameters:
            raise CliError(f"--param gives {name!r} twice; give each parameter once")
        try:
            parameters[name] = json.loads(text)
        except ValueError:
            parameters[name] = text
    return parameters


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    dot = "dot"


@app.command()
def graph(
    target: Annotated[str, typer.Argument(metavar="FILE.py[:OBJECT]", help=TARGET_HELP)],
    format: Annotated[
        GraphFormat, typer.Option("--format", "-f", help="Output syntax.")
    ] = GraphFormat.mermaid,
) -> None:
    """Print the workflow's DAG (sub-workflows as subgraphs) as Mermaid or Graphviz dot."""
    wf = _load_or_exit(target)
    inputs = wf.entrypoint.inputs
    try:
        # drawn without values: the entry's inputs count as given
        compiled = wf.validate(parameters=dict.fromkeys([*inputs.parameters, *inputs.artifacts]))
    except WorkflowValidationError as exc:
        _fail(str(exc))
    typer.echo(render_graph(compiled, format.value, title=wf.name))


@app.command()
def executors() -> None:
    """List the executors installed here (usable with run --executor NAME): where each comes
    from, and why one that cannot be used cannot."""
    from dflow_async.executors._registry import describe_executors

    for name, source, problem in describe_executors():
        typer.echo(f"{name}  ({source})" + (f"  ! {problem}" if problem else ""))


# ---------------------------------------------------------------- graph rendering


def _mermaid_label(text: str) -> str:
    text = " ".join(text.split()).replace("#", "#35;")
    return '"' + text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;") + '"'


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_graph(entry: CompiledTemplate, fmt: str = "mermaid", *, title: str = "") -> str:
    """The entry template's steps and edges; each distinct sub-template drawn once, nested
    at its first use; a template that uses itself gets a dashed edge labelled "recursion"."""
    mermaid = fmt == "mermaid"
    tids: dict[int, str] = {id(entry): "t0"}
    first: dict[int, str] = {}  # template -> the node that "uses" edges point at
    lines: list[str] = (
        ["flowchart TD"]
        if mermaid
        else [
            f"digraph {_dot_quote(title or entry.name)} {{",
            "  compound=true;",
            '  node [shape=box, style=rounded, fontname="Helvetica"];',
        ]
    )
    edges: list[str] = []  # emitted last, at top level, so no block adopts foreign nodes

    def node_id(ct: CompiledTemplate, name: str) -> str:
        return f"{tids[id(ct)]}_{ct.by_name[name]}"

    def edge(a: str, b: str, *, dashed: bool = False, label: str = "", lhead: str = "") -> None:
        if mermaid:
            arrow = "-.->" if dashed else "-->"
            edges.append(f"  {a} {arrow}{f'|{label}|' if label else ''} {b}")
            return
        attrs = ["style=dashed"] if dashed else []
        if label:
            attrs += [f"label={_dot_quote(label)}", "constraint=false"]
        if lhead:
            attrs.append(f"lhead={_dot_quote(lhead)}")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        edges.append(f"  {_dot_quote(a)} -> {_dot_quote(b)}{suffix};")

    def draw(ct: CompiledTemplate, stack: list[int], indent: str) -> None:
        g = as_networkx(ct)
        names = list(g.nodes)
        first[id(ct)] = node_id(ct, names[0]) if names else f"{tids[id(ct)]}_empty"
        if not names:
            lines.append(
                f'{indent}{first[id(ct)]}["(no steps)"]'
                if mermaid
                else f'{indent}{_dot_quote(first[id(ct)])} [label="(no steps)", shape=plain];'
            )
        for name in names:
            is_sub = ct.nodes[ct.by_name[name]].sub is not None
            nid = node_id(ct, name)
            if mermaid:
                label = _mermaid_label(name)
                lines.append(f"{indent}{nid}[[{label}]]" if is_sub else f"{indent}{nid}[{label}]")
            else:
                shape = ", shape=box3d, style=solid" if is_sub else ""
                lines.append(f"{indent}{_dot_quote(nid)} [label={_dot_quote(name)}{shape}];")
        for a, b in g.edges:
            edge(node_id(ct, a), node_id(ct, b))
        for name in names:
            sub = ct.nodes[ct.by_name[name]].sub
            if sub is None:
                continue
            nid = node_id(ct, name)
            if id(sub) in stack:  # the template uses itself (directly or not)
                edge(nid, first[id(sub)], dashed=True, label="recursion")
                continue
            if id(sub) not in tids:
                tids[id(sub)] = tid = f"t{len(tids)}"
                if mermaid:
                    lines.append(f"{indent}subgraph {tid}[{_mermaid_label(sub.name)}]")
                else:
                    lines.append(f"{indent}subgraph {_dot_quote('cluster_' + tid)} {{")
                    lines.append(f"{indent}  label={_dot_quote(sub.name)};")
                draw(sub, [*stack, id(sub)], indent + "  ")
                lines.append(f"{indent}end" if mermaid else f"{indent}}}")
            tid = tids[id(sub)]
            if mermaid:
                edge(nid, tid, dashed=True)
            else:
                edge(nid, first[id(sub)], dashed=True, lhead="cluster_" + tid)

    draw(entry, [id(entry)], "  ")
    lines.extend(edges)
    if not mermaid:
        lines.append("}")
    return "\n".join(lines)


from dflow_async import _cli_runs  # noqa: E402  (registers list/get/logs/resume/...)

_cli_runs.register(app)


def main() -> None:
    app(prog_name="dflow-async")


if __name__ == "__main__":
    main()
