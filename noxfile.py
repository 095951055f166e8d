"""Task runner: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy>=1.10")
    session.run("mypy")


@nox.session(python="3.11")
def chaos(session: nox.Session) -> None:
    """The crash-and-resume test with many more seeded SIGKILL trials than the default suite."""
    session.install("-e", ".[test]")
    trials = session.posargs[0] if session.posargs else "200"
    session.run(
        "pytest",
        "tests/test_durability.py::test_sigkill_at_random_moments_then_resume",
        "--timeout=3600",
        env={"DFLOW_ASYNC_CHAOS_TRIALS": trials},
    )


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against the bare-asyncio floor and Dask, measured in the same run."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/bench_core.py", *session.posargs)


PYDFLOW = "pydflow==1.8.134"


def _dflow_async_imports(source: str) -> str:
    """Point a Dflow program at dflow-async: only its ``dflow`` import lines change."""
    import re

    source = re.sub(r"^(\s*)from dflow(\.| )", r"\1from dflow_async.dflow\2", source, flags=re.M)
    alias = r"\1import dflow_async.dflow as dflow"
    return re.sub(r"^(\s*)import dflow\b", alias, source, flags=re.M)


@nox.session(python="3.11")
def dflow_compat(session: nox.Session) -> None:
    """Dflow compatibility: pydflow's own test workflows (from its sdist, downloaded now) with
    only their imports rewritten, then our tests of every mapped feature with pydflow installed.
    """
    import shutil
    import tarfile
    from pathlib import Path

    session.install("-e", ".[test]")
    work = Path(session.create_tmp()).absolute() / "pydflow-tests"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    session.run("pip", "download", PYDFLOW, "--no-deps", "--no-binary", ":all:", "-d", str(work))
    (sdist,) = work.glob("pydflow-*.tar.gz")
    tests = work / "tests"
    tests.mkdir()
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            path = Path(member.name)
            if path.parent.name == "tests" and path.match("test_*.py"):
                text = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
                (tests / path.name).write_text(_dflow_async_imports(text))
    (tests / "pytest.ini").write_text("[pytest]\n")  # not this repository's settings
    # pydflow is not installed yet: a `dflow` import the rewrite missed fails loudly
    with session.chdir(tests):  # they write their files in the current directory
        session.run("pytest", "-p", "no:cacheprovider", "-v", ".")
    # pydflow pins cloudpickle==2.2.0 and dflow-async needs >=3: no pins, only what it imports
    session.install("--no-deps", PYDFLOW)
    session.install("jsonpickle", "filelock")
    session.run("pytest", "tests/dflow_compat", *session.posargs)
