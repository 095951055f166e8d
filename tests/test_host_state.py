"""A run leaves the host application's process state as it found it (gc, std streams)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dflow_async import Step, Workflow, op

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Whatever a test does to the collector is undone (nothing frozen, the thresholds)."""
    if gc.get_freeze_count():
        pytest.skip("something in this process froze the heap already")
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def one_step(name: str, fn: object, **parameters: object) -> Workflow:
    wf = Workflow(name)
    wf.add(Step("s", fn, parameters=parameters))
    return wf


@op
def ident(x: int) -> int:
    return x


@pytest.mark.usefixtures("gc_state")
def test_a_run_keeps_the_heap_the_application_froze() -> None:
    app_state = [[i] for i in range(1000)]  # noqa: F841 - long-lived objects of the app
    gc.freeze()  # a preforking server keeping its copy-on-write pages shared
    frozen = gc.get_freeze_count()
    assert one_step("frozen", ident, x=1).run(journal=False).status == "Succeeded"
    # frozen objects may have been freed meanwhile, but none was unfrozen
    assert gc.get_freeze_count() > frozen // 2


@pytest.mark.usefixtures("gc_state")
def test_a_run_keeps_thresholds_the_application_set_while_it_ran() -> None:
    @op
    def tune(x: int) -> int:
        gc.set_threshold(5000, 20, 20)
        return x

    assert one_step("tuning", tune, x=1).run(journal=False).status == "Succeeded"
    assert gc.get_threshold() == (5000, 20, 20)


@pytest.mark.usefixtures("gc_state")
def test_a_run_tunes_the_collector_and_undoes_it_when_it_ends() -> None:
    seen: dict[str, object] = {}

    @op
    def look(x: int) -> int:
        seen["frozen"] = gc.get_freeze_count()
        seen["gen0"] = gc.get_threshold()[0]
        return x

    gc.set_threshold(700, 10, 10)
    assert one_step("tuned", look, x=1).run(journal=False).status == "Succeeded"
    assert seen["frozen"] and seen["gen0"] == 20_000  # the pre-run heap out of collection
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.usefixtures("gc_state")
def test_a_run_keeps_automatic_collection_off_if_the_application_turned_it_off() -> None:
    seen: dict[str, object] = {}

    @op
    def look(x: int) -> int:
        seen["gen0"] = gc.get_threshold()[0]
        return x

    gc.set_threshold(0, 10, 10)
    assert one_step("untuned", look, x=1).run(journal=False).status == "Succeeded"
    assert seen["gen0"] == 0
    assert gc.get_threshold() == (0, 10, 10)


@op
def talk(x: int) -> int:
    print(f"op says {x}")
    return x


def logged(result: Any) -> str:
    return "".join(
        Path(w + ".log").read_text()
        for rec in result.records
        for w in rec.workdirs
        if Path(w + ".log").exists()
    )


def test_printing_without_console_streams_stays_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    # pythonw, a service, an embedded interpreter: print() to a None sys.stdout does nothing
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", None)
    printed: list[str] = []

    def hook(kind: str, rec: Any, fields: Any) -> None:
        print(kind)  # outside any step, while the run is active
        printed.append(kind)

    result = one_step("mute", talk, x=5).run(journal=False, on_event=hook)
    assert result.status == "Succeeded"
    assert printed  # no hook call raised
    assert logged(result) == "op says 5\n"  # a step's output still reaches its log
    print("the application prints after the run")
    print("and to stderr", file=sys.stderr, flush=True)


def test_worker_processes_without_console_streams_run_their_ops(tmp_path: Path) -> None:
    # a daemon started with its descriptors 1 and 2 closed: its worker processes have no
    # sys.stdout/sys.stderr either
    script = tmp_path / "daemon.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        from pathlib import Path
        from dflow_async import Workflow, Step, op

        @op
        def ident(x: int) -> int:
            return x

        if __name__ == "__main__":
            wf = Workflow("daemon")
            wf.add(Step("s", ident, parameters={"x": 3}))
            r = wf.run(journal=False, executor="process")
            Path(sys.argv[1]).write_text(f"{r.status} {r.records[0].error}")
        """)
    )
    out = tmp_path / "out.txt"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" >&- 2>&-', sys.executable, str(script), str(out)],
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0
    assert out.read_text() == "Succeeded None"


def probe(stream: Any) -> dict[str, Any]:
    return {
        "writable": stream.writable(),
        "readable": stream.readable(),
        "seekable": stream.seekable(),
        "errors": stream.errors,
        "encoding": stream.encoding,
        "newlines": stream.newlines,
        "line_buffering": stream.line_buffering,
        "write_through": stream.write_through,
        "fileno": stream.fileno(),
        "isatty": stream.isatty(),
        "closed": stream.closed,
        "name": stream.name,
        "mode": stream.mode,
        "buffer": stream.buffer,
        "TextIOBase": isinstance(stream, io.TextIOBase),
    }


@contextlib.contextmanager
def own_streams(where: Path) -> Iterator[tuple[Any, Any]]:
    """sys.stdout/sys.stderr are files of the test's, put back afterwards. (Set in the test
    itself: pytest puts its own capture in place between a fixture and the test.)"""
    saved = sys.stdout, sys.stderr
    with (
        open(where / "stdout.txt", "w", encoding="utf-8", errors="surrogateescape") as out,
        open(where / "stderr.txt", "w", encoding="utf-8", errors="backslashreplace") as err,
    ):
        sys.stdout, sys.stderr = out, err
        try:
            yield out, err
        finally:
            sys.stdout, sys.stderr = saved


def test_a_run_gives_the_std_streams_back(tmp_path: Path) -> None:
    with own_streams(tmp_path) as (out, err):
        result = one_step("streams", talk, x=6).run(journal=False)
        assert sys.stdout is out and sys.stderr is err
    assert result.status == "Succeeded" and logged(result) == "op says 6\n"


def test_during_a_run_the_streams_answer_as_the_ones_they_stand_in_for(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    @op
    def look(x: int) -> int:
        assert type(sys.stdout) is not io.TextIOWrapper  # a router stands in while it runs
        seen["stdout"], seen["stderr"] = probe(sys.stdout), probe(sys.stderr)
        sys.stdout.reconfigure(line_buffering=True)  # reaches the application's stream
        print(f"op says {x}")
        return x

    with own_streams(tmp_path) as (out, err):
        expected = {"stdout": probe(out), "stderr": probe(err)}
        result = one_step("look", look, x=7).run(journal=False)
        assert out.line_buffering
    assert result.status == "Succeeded", result.records[0].error
    assert seen == expected
    assert logged(result) == "op says 7\n"


def test_a_stream_the_application_puts_in_place_during_a_run_stays(tmp_path: Path) -> None:
    mine = io.StringIO()

    @op
    def replace(x: int) -> int:
        sys.stdout = mine  # the application, in another thread, meanwhile
        return x

    wf = Workflow("replaced")
    first = Step("first", replace, parameters={"x": 8})
    wf.add(first)
    wf.add(Step("then", talk, parameters={"x": first.outputs.parameters["result"]}))
    with own_streams(tmp_path) as (_, err):
        result = wf.run(journal=False)
        assert sys.stdout is mine and sys.stderr is err
    assert result.status == "Succeeded"
    assert logged(result) == "op says 8\n"  # the later step still printed to its log
    assert mine.getvalue() == ""


def test_the_streams_stay_routed_until_the_last_concurrent_run_ends(tmp_path: Path) -> None:
    async def main() -> list[Any]:
        first_done = asyncio.Event()

        @op
        async def quick(x: int) -> int:
            return x

        @op
        async def late(x: int) -> int:
            await first_done.wait()
            print(f"late says {x}")
            return x

        async def first() -> Any:
            try:
                return await one_step("quick", quick, x=1).arun(journal=False)
            finally:
                first_done.set()

        return await asyncio.gather(first(), one_step("late", late, x=2).arun(journal=False))

    with own_streams(tmp_path) as (out, _):
        quick, late = asyncio.run(main())
        assert sys.stdout is out
    assert quick.status == late.status == "Succeeded"
    assert logged(late) == "late says 2\n"
    assert (tmp_path / "stdout.txt").read_text() == ""


def test_a_thread_printing_while_runs_come_and_go_loses_nothing(tmp_path: Path) -> None:
    stop = threading.Event()
    printed = 0
    failures: list[BaseException] = []

    def chatter() -> None:
        nonlocal printed
        try:
            while not stop.is_set() or printed < 200:
                print(f"app line {printed}")  # sys.stdout looked up anew each time
                printed += 1
        except BaseException as exc:  # reported below
            failures.append(exc)

    with own_streams(tmp_path) as (out, _):
        thread = threading.Thread(target=chatter)
        thread.start()
        try:
            for i in range(3):
                result = one_step(f"chatty{i}", talk, x=i).run(journal=False)
                assert result.status == "Succeeded" and logged(result) == f"op says {i}\n"
        finally:
            stop.set()
            thread.join()
        assert sys.stdout is out
    assert not failures
    lines = (tmp_path / "stdout.txt").read_text().splitlines()
    assert lines == [f"app line {i}" for i in range(printed)]
