"""The examples run, on every executor, and compute what they claim.

Each example is imported by path under its file name (``quickstart``...), with ``examples/`` on
``sys.path``, so process workers import its OPs by reference exactly as the driver sees them.
The expected values are recomputed here independently of the examples' own code.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# At import (collection) time, before any test starts the process executor's fork server:
# the server copies sys.path when it starts, and its workers import the examples by name.
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

_HAS_PROCESS = importlib.util.find_spec("dflow_async.executors._process") is not None
EXECUTORS = [
    "inline",
    pytest.param(
        "process",
        marks=pytest.mark.skipif(
            not _HAS_PROCESS, reason="dflow_async.executors._process is not written yet"
        ),
    ),
]


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as module ``name`` (once; registered before it runs)."""
    module = sys.modules.get(name)
    if module is not None and Path(module.__file__ or "") == EXAMPLES / f"{name}.py":
        return module
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs are stored under ./.dflow-async
    monkeypatch.delenv("DFLOW_ASYNC_HOME", raising=False)


def run(name: str, executor: str, **kwargs: Any) -> Any:
    result = load(name).wf.run(executor=executor, **kwargs)
    failed = {r.path: r.errors for r in result.records if r.phase == "Failed"}
    assert result.status == "Succeeded", failed
    assert Path.cwd().resolve() in result.run_dir.resolve().parents
    return result


def one(result: Any, name: str) -> Any:
    records = result.query_step(name=name)
    assert len(records) == 1, records
    return records[0]


# ---------------------------------------------------------------- quickstart


def lj_energy(coords: list[list[float]]) -> float:
    energy = 0.0
    for i, a in enumerate(coords):
        for b in coords[i + 1 :]:
            r6 = math.dist(a, b) ** 6
            energy += 4.0 * (1.0 / r6**2 - 1.0 / r6)
    return energy


def xyz_coords(path: Path) -> list[list[float]]:
    lines = path.read_text().splitlines()
    return [[float(v) for v in line.split()[1:]] for line in lines[2 : 2 + int(lines[0])]]


def max_gradient(coords: list[list[float]], h: float = 1e-6) -> float:
    """The largest component of dE/dx, by central differences of :func:`lj_energy`."""
    worst = 0.0
    for i in range(len(coords)):
        for k in range(3):
            plus = [list(a) for a in coords]
            minus = [list(a) for a in coords]
            plus[i][k] += h
            minus[i][k] -= h
            worst = max(worst, abs(lj_energy(plus) - lj_energy(minus)) / (2 * h))
    return worst


# the global minimum of the 7-atom Lennard-Jones cluster, a pentagonal bipyramid
# (Cambridge Cluster Database)
LJ7_GLOBAL_MINIMUM = -16.505384


@pytest.mark.parametrize("threshold", [None, -17.0])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_quickstart(executor: str, threshold: float | None) -> None:
    params = None if threshold is None else {"threshold": threshold}
    result = run("quickstart", executor, parameters=params)
    threshold = -16.0 if threshold is None else threshold

    gen = one(result, "generate")
    configs = gen.outputs.artifacts["configs"]
    assert len(configs) == 8 and all(Path(c).is_file() for c in configs)
    assert gen.outputs.parameters["names"] == [f"cand-{i:02d}" for i in range(8)]

    relax = one(result, "relax")
    assert relax.slices == 8 and relax.failed_slices == 0
    energies = relax.outputs.parameters["energy"]
    relaxed = relax.outputs.artifacts["relaxed"]
    assert len(energies) == len(relaxed) == 8
    for config, energy, path in zip(configs, energies, relaxed, strict=True):
        coords = xyz_coords(Path(path))
        # the slice's energy is the energy of the geometry it wrote...
        assert lj_energy(coords) == pytest.approx(energy, rel=1e-9)
        # ...which is a stationary point, below where it started
        assert max_gradient(coords) < 1e-5
        assert energy < lj_energy(xyz_coords(Path(config)))
    assert min(energies) == pytest.approx(LJ7_GLOBAL_MINIMUM, abs=1e-6)  # the screen finds it
    assert len({round(e, 6) for e in energies}) >= 3  # and several distinct local minima

    best = one(result, "pick-best").outputs
    i = min(range(8), key=energies.__getitem__)
    assert best.parameters == {"name": f"cand-{i:02d}", "energy": energies[i]}
    # passed through: the very same stored artifact (same digest, same bytes), not a copy
    assert best.artifacts["structure"].ref.digest == relaxed[i].ref.digest
    assert os.path.samefile(best.artifacts["structure"], relaxed[i])

    report = one(result, "report")
    if min(energies) < threshold:
        assert report.phase == "Succeeded"
        text = Path(report.outputs.artifacts["result"]).read_text()
        assert f"cand-{i:02d}" in text and f"{energies[i]:.4f}" in text
        assert (Path(report.outputs.artifacts["result"]).parent / "best.xyz").read_text() == (
            Path(relaxed[i]).read_text()
        )
    else:
        assert report.phase == "Skipped"
        assert report.outputs.artifacts == {}
        assert not list(result.run_dir.rglob("report.md"))


# ---------------------------------------------------------------- dag_artifacts


@pytest.mark.parametrize("executor", EXECUTORS)
def test_dag_artifacts(executor: str) -> None:
    result = run("dag_artifacts", executor)
    measure, pooled, per_run, merge = (
        one(result, n) for n in ("measure", "pooled-fit", "per-run", "merge")
    )
    # the order came from the artifacts alone
    assert measure.end <= min(pooled.start, per_run.start)
    assert max(pooled.end, per_run.end) <= merge.start
    assert max(pooled.start, per_run.start) <= min(pooled.end, per_run.end)  # in parallel

    runs_dir = Path(measure.outputs.artifacts["runs"])
    files = sorted(runs_dir.glob("run-*.csv"))
    assert [f.name for f in files] == [f"run-{i:02d}.csv" for i in range(6)]
    points = []
    per_file_k = []
    for f in files:
        with f.open(newline="") as fh:
            rows = [
                (float(r["mass_kg"]) * 9.81, float(r["extension_m"])) for r in csv.DictReader(fh)
            ]
        points += rows
        # x = F / k through the origin: 1/k = sum(F x) / sum(F^2)
        per_file_k.append(sum(f * f for f, _ in rows) / sum(f * x for f, x in rows))
    k_pooled = sum(f * f for f, _ in points) / sum(f * x for f, x in points)

    fit = pooled.outputs.parameters
    assert fit["k"] == pytest.approx(k_pooled, rel=1e-12)
    assert abs(fit["k"] - 25.0) < 3 * fit["k_err"]  # the true constant, within 3 sigma
    assert json.loads(Path(pooled.outputs.artifacts["fit"]).read_text())["points"] == 48
    assert per_run.outputs.parameters["k_mean"] == pytest.approx(statistics.fmean(per_file_k))
    assert per_run.outputs.parameters["k_sem"] == pytest.approx(
        statistics.stdev(per_file_k) / math.sqrt(6)
    )

    report = json.loads(Path(merge.outputs.artifacts["report"]).read_text())
    assert report["consistent"] is merge.outputs.parameters["consistent"] is True
    assert report["pooled"]["k"] == pytest.approx(k_pooled, rel=1e-12)
    assert report["per_run"]["k_mean"] == pytest.approx(statistics.fmean(per_file_k), rel=1e-6)


# ---------------------------------------------------------------- slices_group_size


@pytest.mark.parametrize("executor", EXECUTORS)
def test_slices_group_size(executor: str) -> None:
    result = run("slices_group_size", executor)
    rng = random.Random(2024)
    seeds = [rng.getrandbits(32) for _ in range(1000)]
    hits = []
    for seed in seeds:
        r = random.Random(seed)
        hits.append(sum(r.random() ** 2 + r.random() ** 2 <= 1.0 for _ in range(500)))

    fan = one(result, "sample")
    assert fan.slices == 1000 and fan.failed_slices == 0
    assert fan.attempts == 1000 // 50  # one attempt per group of 50 slices
    assert fan.outputs.parameters["result"] == hits  # in slice order

    out = one(result, "estimate").outputs.parameters
    assert out["total"] == 500_000
    assert out["pi"] == 4 * sum(hits) / 500_000
    assert abs(out["pi"] - math.pi) < 4 * out["stderr"]


# ---------------------------------------------------------------- recursion_loop


def newton_kepler(M: float, e: float, E: float, tol: float, limit: int) -> list[float]:
    iterates = []
    for _ in range(limit):
        E = E - (E - e * math.sin(E) - M) / (1.0 - e * math.cos(E))
        iterates.append(E)
        if abs(E - e * math.sin(E) - M) < tol:
            break
    return iterates


@pytest.mark.parametrize("limit", [None, 2])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_recursion_loop(executor: str, limit: int | None) -> None:
    params = None if limit is None else {"limit": limit}
    result = run("recursion_loop", executor, parameters=params)
    expected = newton_kepler(0.3, 0.95, math.pi, 1e-12, limit or 30)
    n = len(expected)
    assert n == (6 if limit is None else 2)

    updates = result.query_step(name="newton-update")
    assert [r.key for r in updates] == [f"iter-{i}" for i in range(n)]
    assert [r.outputs.parameters["E"] for r in updates] == pytest.approx(expected, abs=1e-15)
    third = result.query_step(key="iter-1")
    assert len(third) == 1 and third[0].outputs.parameters["E"] == pytest.approx(expected[1])
    nexts = result.query_step(name="next")
    assert [r.phase for r in nexts] == ["Succeeded"] * (n - 1) + ["Skipped"]

    out = result.outputs["parameters"]
    assert out["iterations"] == n
    assert out["E"] == pytest.approx(expected[-1], abs=1e-15)
    if limit is None:
        assert out["converged"] is True
        assert abs(out["E"] - 0.95 * math.sin(out["E"]) - 0.3) < 1e-12
    else:
        assert out["converged"] is False
        assert out["residual"] > 1e-3


# ---------------------------------------------------------------- failure_tolerance


@pytest.mark.parametrize("executor", EXECUTORS)
def test_failure_tolerance(executor: str) -> None:
    result = run("failure_tolerance", executor)
    rates = [0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 19.0, 25.0, 40.0]

    scan = one(result, "euler-scan")
    assert scan.phase == "Succeeded"
    assert scan.slices == 10 and scan.failed_slices == 2
    errors = scan.outputs.parameters["max_error"]
    assert [k for k, err in zip(rates, errors, strict=True) if err is None] == [25.0, 40.0]
    assert sorted(e.split("Diverged: ")[1].split(":")[0] for e in scan.errors) == [
        "k = 25.0",
        "k = 40.0",
    ]
    for k, err, y_end in zip(rates, errors, scan.outputs.parameters["y_end"], strict=True):
        if k * 0.1 >= 2:
            assert err is None and y_end is None
            continue
        ys = [(1.0 - k * 0.1) ** n for n in range(1, 101)]
        worst = max(abs(y - math.exp(-k * 0.1 * n)) for n, y in enumerate(ys, 1))
        assert err == pytest.approx(worst, rel=1e-9, abs=1e-15)
        assert y_end == pytest.approx(ys[-1], rel=1e-9, abs=1e-300)

    svc = one(result, "stability-limit")
    assert svc.attempts == 3
    assert len(svc.errors) == 2 and all("[transient] TransientError" in e for e in svc.errors)
    assert svc.outputs.parameters["result"] == pytest.approx(20.0)

    out = one(result, "classify").outputs.parameters
    assert out["stable"] == rates[:8]
    assert out["diverged"] == [25.0, 40.0]
    assert out["matches_theory"] is True
    assert out["worst_error"] == max(e for e in errors if e is not None)


# ---------------------------------------------------------------- as scripts


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("quickstart.py", [], "best candidate: cand-"),
        ("quickstart.py", ["process"], "report: "),
        ("dag_artifacts.py", [], "consistent: True"),
        ("slices_group_size.py", [], "1000 slices in 20 attempts"),
        ("recursion_loop.py", [], "converged after 6 iterations"),
        ("failure_tolerance.py", [], "matches theory: True"),
    ],
)
def test_script(tmp_path: Path, script: str, args: list[str], expect: str) -> None:
    if args == ["process"] and not _HAS_PROCESS:
        pytest.skip("dflow_async.executors._process is not written yet")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DFLOW_ASYNC_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, f"examples/{script}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expect in proc.stdout
    assert (tmp_path / "runs").is_dir()
    if script == "quickstart.py":
        report = Path(proc.stdout.split("report: ")[1].split()[0])
        assert tmp_path in report.parents and report.is_file()
