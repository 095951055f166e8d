"""Every test runs in its own directory (Dflow code uploads from and downloads to the current
directory) with its own store, and waits for the workflows it submits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dflow_async.dflow import config


@pytest.fixture(autouse=True)
def dflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(config, "store", str(tmp_path / ".dflow-async"))
    monkeypatch.setitem(config, "executor", "inline")
    yield tmp_path
