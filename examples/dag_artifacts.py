"""A DAG whose order comes from artifact flow: calibrate a spring from a directory of runs.

Hooke's law, F = k x. A lab measured the extension x of a spring under several hanging masses
(F = m g), in several independent runs, one CSV file per run.

* ``measure`` simulates the lab: it writes the dataset *directory* (``runs/run-XX.csv``) with
  Gaussian noise on every extension. One artifact is the whole directory.
* Two analyses read that directory independently, so the DAG runs them in parallel:
  ``pooled-fit`` (a class-style ``OP``) fits k by least squares through the origin on all
  points at once, with its standard error; ``per-run`` fits every run on its own and reports
  the spread of the per-run estimates.
* ``merge`` reads both results and checks that the two estimators agree.

No step names another in ``dependencies=``: every edge comes from an artifact one step
produces and another consumes. The steps are even added to the DAG in reverse order.

Run: ``PYTHONPATH=src python examples/dag_artifacts.py [inline|process]``.
"""

import csv
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Annotated, TypedDict

from dflow_async import DAG, OP, OPIO, Artifact, OPIOSign, Step, Workflow, op

G = 9.81  # m/s^2
MASSES_KG = [0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40]


def read_run(path: Path) -> tuple[list[float], list[float]]:
    """(forces in N, extensions in m) of one run file."""
    forces, extensions = [], []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            forces.append(float(row["mass_kg"]) * G)
            extensions.append(float(row["extension_m"]))
    return forces, extensions


def fit_spring_constant(forces: list[float], extensions: list[float]) -> tuple[float, float]:
    """k and its standard error. The noise is on the extension, so fit x = c F through the
    origin by least squares (c = sum(F x) / sum(F^2)), then k = 1 / c, dk = dc / c^2."""
    sff = sum(f * f for f in forces)
    c = sum(f * x for f, x in zip(forces, extensions, strict=True)) / sff
    rss = sum((x - c * f) ** 2 for f, x in zip(forces, extensions, strict=True))
    c_err = math.sqrt(rss / (len(forces) - 1) / sff)
    return 1.0 / c, c_err / (c * c)


class Dataset(TypedDict):
    runs: Annotated[Path, Artifact]


class PerRun(TypedDict):
    table: Annotated[Path, Artifact]
    k_mean: float
    k_sem: float


class Merged(TypedDict):
    report: Annotated[Path, Artifact]
    consistent: bool


@op
def measure(n_runs: int, k_true: float, noise_m: float, seed: int) -> Dataset:
    """Simulated measurements: one CSV per run in a ``runs/`` directory."""
    rng = random.Random(seed)
    out = Path("runs")
    out.mkdir()
    for r in range(n_runs):
        with (out / f"run-{r:02d}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["mass_kg", "extension_m"])
            for m in MASSES_KG:
                writer.writerow([m, f"{m * G / k_true + rng.gauss(0.0, noise_m):.6f}"])
    return Dataset(runs=out)


class PooledFit(OP):
    """Fit k on every point of every run at once."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"runs": Artifact(Path)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"k": float, "k_err": float, "fit": Artifact(Path)})

    def execute(self, op_in: OPIO) -> OPIO:
        forces: list[float] = []
        extensions: list[float] = []
        for path in sorted(op_in["runs"].glob("run-*.csv")):
            f, x = read_run(path)
            forces += f
            extensions += x
        k, k_err = fit_spring_constant(forces, extensions)
        Path("fit.json").write_text(json.dumps({"k": k, "k_err": k_err, "points": len(forces)}))
        return OPIO(k=k, k_err=k_err, fit=Path("fit.json"))


@op
def per_run(runs: Artifact(Path)) -> PerRun:
    """Fit every run on its own: the scatter of the estimates is an independent error bar."""
    estimates = []
    with open("per_run.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", "k"])
        for path in sorted(runs.glob("run-*.csv")):
            f, x = read_run(path)
            k, _ = fit_spring_constant(f, x)
            estimates.append(k)
            writer.writerow([path.stem, f"{k:.6f}"])
    k_mean = statistics.fmean(estimates)
    k_sem = statistics.stdev(estimates) / math.sqrt(len(estimates))
    return PerRun(table=Path("per_run.csv"), k_mean=k_mean, k_sem=k_sem)


@op
def merge(fit: Artifact(Path), table: Artifact(Path)) -> Merged:
    """Do the two estimators agree within three combined standard errors?"""
    pooled = json.loads(fit.read_text())
    with table.open(newline="") as fh:
        ks = [float(row["k"]) for row in csv.DictReader(fh)]
    k_mean = statistics.fmean(ks)
    k_sem = statistics.stdev(ks) / math.sqrt(len(ks))
    z = abs(pooled["k"] - k_mean) / math.hypot(pooled["k_err"], k_sem)
    report = {
        "pooled": pooled,
        "per_run": {"k_mean": k_mean, "k_sem": k_sem, "runs": len(ks)},
        "z": z,
        "consistent": z < 3.0,
    }
    Path("report.json").write_text(json.dumps(report, indent=2))
    return Merged(report=Path("report.json"), consistent=z < 3.0)


def build(n_runs: int = 6, k_true: float = 25.0, noise_m: float = 0.002, seed: int = 42) -> DAG:
    data = Step(
        "measure",
        measure,
        parameters={"n_runs": n_runs, "k_true": k_true, "noise_m": noise_m, "seed": seed},
    )
    pooled = Step("pooled-fit", PooledFit, artifacts={"runs": data.outputs.artifacts["runs"]})
    runs = Step("per-run", per_run, artifacts={"runs": data.outputs.artifacts["runs"]})
    final = Step(
        "merge",
        merge,
        artifacts={
            "fit": pooled.outputs.artifacts["fit"],
            "table": runs.outputs.artifacts["table"],
        },
    )
    dag = DAG("spring-calibration")
    dag.add([final, runs, pooled, data])  # any order: the edges come from the artifacts
    return dag


wf = Workflow("spring-calibration", dag=build())


def main(executor: str = "inline") -> int:
    result = wf.run(executor=executor)
    if not result.succeeded:
        print(f"run {result.run_id} {result.status}")
        for rec in result.query_step(phase="Failed"):
            print(f"  {rec.path}: {rec.error}")
        return 1
    for rec in sorted(result.records, key=lambda r: r.start or 0.0):
        print(f"  {rec.name:<11} {rec.phase}")
    fit = result.query_step(name="pooled-fit")[0].outputs.parameters
    runs = result.query_step(name="per-run")[0].outputs.parameters
    merged = result.query_step(name="merge")[0].outputs
    print(f"pooled fit:  k = {fit['k']:.3f} +- {fit['k_err']:.3f} N/m")
    print(f"per-run fit: k = {runs['k_mean']:.3f} +- {runs['k_sem']:.3f} N/m")
    print(f"consistent: {merged.parameters['consistent']}; report: {merged.artifacts['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "inline"))
