"""Worker processes import the code under test: relative ``PYTHONPATH`` entries (as in
``PYTHONPATH=src pytest``) are made absolute before any test changes directory. A process
executor's forkserver started after a chdir would otherwise find another copy of the package
(an installed one) and test that instead."""

from __future__ import annotations

import os

_paths = os.environ.get("PYTHONPATH")
if _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        os.path.abspath(p) if p else p for p in _paths.split(os.pathsep)
    )
