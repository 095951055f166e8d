"""The public surface is exactly what ``__all__`` says, and it is sorted."""

from __future__ import annotations

import dflow_async


def test_all_is_sorted_and_complete() -> None:
    names = dflow_async.__all__
    assert list(names) == sorted(names)
    public = {n for n in vars(dflow_async) if not n.startswith("_")}
    # submodules are reachable as attributes but are not part of the curated API
    modules = {n for n in public if type(getattr(dflow_async, n)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(names) - {"__version__"}
    for name in names:
        assert getattr(dflow_async, name) is not None


def test_core_never_imports_heavy_backends() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dflow_async, dflow_async.executors; "
        "dflow_async.executors.ProcessExecutor; "
        "bad = [m for m in ('dask', 'distributed', 'ray', 'kubernetes') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
