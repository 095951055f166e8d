"""A run leaves the host application's process state as it found it (gc, std streams)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
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
def test_a_run_keeps_what_the_application_froze_while_it_ran() -> None:
    @op
    def freeze(x: int) -> int:
        gc.freeze()  # the application (another thread) freezes its heap meanwhile
        return x

    assert one_step("freezing", freeze, x=1).run(journal=False).status == "Succeeded"
    assert gc.get_freeze_count() > 0


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
