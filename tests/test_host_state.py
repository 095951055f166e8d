"""A run leaves the host application's process state as it found it (gc, std streams)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from dflow_async import Step, Workflow, op


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
