"""Quickstart: screen random Lennard-Jones clusters for the lowest-energy structure.

A small but complete fan-out / fan-in workflow:

1. ``generate`` writes ``n_candidates`` random starting geometries of an ``n_atoms`` cluster
   as XYZ files (one artifact: a list of paths).
2. ``relax`` fans out over those files with ``Slices``: each slice relaxes one cluster by
   steepest descent on the Lennard-Jones potential (reduced units, epsilon = sigma = 1) and
   writes the relaxed geometry as an XYZ artifact. It is a class-style ``OP``.
3. ``pick-best`` reduces the stacked lists (energies, relaxed files) to the best candidate.
4. ``report`` runs only ``when=`` the best energy is below ``threshold``; it writes a short
   Markdown report next to a copy of the winning geometry.

For seven atoms the global minimum is the pentagonal bipyramid (E = -16.505); random starts
often fall into the higher minima at -15.935, -15.593 or -15.533 instead. The default
threshold of -16.0 asks "did the screen find the global minimum?". Run it (the optional
argument picks the executor)::

    PYTHONPATH=src python examples/quickstart.py [inline|process]
    dflow-async run examples/quickstart.py --executor process

or change the inputs: ``wf.run(parameters={"threshold": -17.0})`` skips the report.
"""

import math
import random
import sys
from pathlib import Path
from typing import Annotated, TypedDict

from dflow_async import (
    OP,
    OPIO,
    Artifact,
    OPIOSign,
    Parameter,
    Slices,
    Step,
    Steps,
    Workflow,
    op,
)

Coords = list[list[float]]


# ---------------------------------------------------------------- pure-Python physics


def lj_energy_and_forces(coords: Coords) -> tuple[float, Coords]:
    """Lennard-Jones energy 4 * sum(r^-12 - r^-6) and the force on every atom."""
    n = len(coords)
    energy = 0.0
    forces = [[0.0, 0.0, 0.0] for _ in range(n)]
    for i in range(n):
        xi, yi, zi = coords[i]
        for j in range(i + 1, n):
            dx, dy, dz = xi - coords[j][0], yi - coords[j][1], zi - coords[j][2]
            inv_r2 = 1.0 / (dx * dx + dy * dy + dz * dz)
            inv_r6 = inv_r2 * inv_r2 * inv_r2
            energy += 4.0 * (inv_r6 * inv_r6 - inv_r6)
            # F_i = -dE/dr_i = 24 (2 r^-12 - r^-6) / r^2 * (r_i - r_j)
            scale = 24.0 * (2.0 * inv_r6 * inv_r6 - inv_r6) * inv_r2
            for k, d in enumerate((dx, dy, dz)):
                forces[i][k] += scale * d
                forces[j][k] -= scale * d
    return energy, forces


def relax_cluster(coords: Coords, max_steps: int, ftol: float = 1e-6) -> tuple[Coords, float, int]:
    """Steepest descent with a backtracking step: returns (coords, energy, steps taken)."""
    energy, forces = lj_energy_and_forces(coords)
    step = 0.01
    for n in range(max_steps):
        fmax = max(math.sqrt(sum(c * c for c in f)) for f in forces)
        if fmax < ftol:
            return coords, energy, n
        while True:
            trial = [
                [x + step * f for x, f in zip(atom, force, strict=True)]
                for atom, force in zip(coords, forces, strict=True)
            ]
            trial_energy, trial_forces = lj_energy_and_forces(trial)
            if trial_energy < energy or step < 1e-12:
                break
            step *= 0.5
        coords, energy, forces = trial, trial_energy, trial_forces
        step *= 1.2
    return coords, energy, max_steps


def random_cluster(n_atoms: int, rng: random.Random, box: float = 2.2, dmin: float = 0.9) -> Coords:
    """Random positions in a cube, no two atoms closer than ``dmin`` (rejection sampling)."""
    coords: Coords = []
    while len(coords) < n_atoms:
        p = [rng.uniform(0.0, box) for _ in range(3)]
        if all(math.dist(p, q) >= dmin for q in coords):
            coords.append(p)
    return coords


def write_xyz(path: Path, coords: Coords, comment: str) -> None:
    lines = [str(len(coords)), comment]
    lines += [f"Ar {x:.10f} {y:.10f} {z:.10f}" for x, y, z in coords]
    path.write_text("\n".join(lines) + "\n")


def read_xyz(path: Path) -> tuple[Coords, str]:
    lines = path.read_text().splitlines()
    n = int(lines[0])
    coords = [[float(v) for v in line.split()[1:4]] for line in lines[2 : 2 + n]]
    return coords, lines[1]


# ---------------------------------------------------------------- OPs


class Candidates(TypedDict):
    """``generate``'s outputs: a TypedDict return annotation declares several ports."""

    configs: Annotated[list[Path], Artifact]
    names: list[str]


class Best(TypedDict):
    name: str
    energy: float
    structure: Annotated[Path, Artifact]


@op
def generate(n_candidates: int, n_atoms: int, seed: int) -> Candidates:
    """Random starting geometries, one XYZ file per candidate."""
    rng = random.Random(seed)
    out = Path("candidates")
    out.mkdir()
    paths, names = [], []
    for i in range(n_candidates):
        name = f"cand-{i:02d}"
        write_xyz(out / f"{name}.xyz", random_cluster(n_atoms, rng), name)
        paths.append(out / f"{name}.xyz")
        names.append(name)
    return Candidates(configs=paths, names=names)


class RelaxCluster(OP):
    """Relax one cluster; the fan-out runs one of these per candidate file."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"config": Artifact(Path), "max_steps": Parameter(int, default=2000)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"energy": float, "steps": int, "relaxed": Artifact(Path)})

    def execute(self, op_in: OPIO) -> OPIO:
        coords, name = read_xyz(op_in["config"])
        coords, energy, steps = relax_cluster(coords, op_in["max_steps"])
        write_xyz(Path("relaxed.xyz"), coords, f"{name} E={energy:.6f}")
        return OPIO(energy=energy, steps=steps, relaxed=Path("relaxed.xyz"))


@op
def pick_best(names: list[str], energies: list[float], structures: Artifact(list[Path])) -> Best:
    """Fan-in: the candidate with the lowest relaxed energy."""
    best = min(range(len(energies)), key=energies.__getitem__)
    # an input artifact may be passed through as an output unchanged
    return Best(name=names[best], energy=energies[best], structure=structures[best])


@op
def write_report(
    name: str,
    energy: float,
    threshold: float,
    structure: Artifact(Path),
) -> Artifact(Path):
    """Only runs when the screen found a structure below the threshold. A single return
    annotation declares one output port, named ``result``."""
    Path("best.xyz").write_text(structure.read_text())
    Path("report.md").write_text(
        f"# Lennard-Jones screen\n\nBest candidate: **{name}**, E = {energy:.4f} epsilon "
        f"(threshold {threshold}).\n\nGeometry: best.xyz\n"
    )
    return Path("report.md")


# ---------------------------------------------------------------- workflow

screen = Steps("lj-screen", inputs={"n_candidates": 8, "n_atoms": 7, "seed": 7, "threshold": -16.0})
params = screen.inputs.parameters

gen = Step(
    "generate",
    generate,
    parameters={
        "n_candidates": params["n_candidates"],
        "n_atoms": params["n_atoms"],
        "seed": params["seed"],
    },
)
relax = Step(
    "relax",
    RelaxCluster,
    artifacts={"config": gen.outputs.artifacts["configs"]},
    slices=Slices(
        input_artifact=["config"],
        output_parameter=["energy", "steps"],
        output_artifact=["relaxed"],
        pool_size=4,
    ),
)
best = Step(
    "pick-best",
    pick_best,
    parameters={
        "names": gen.outputs.parameters["names"],
        "energies": relax.outputs.parameters["energy"],
    },
    artifacts={"structures": relax.outputs.artifacts["relaxed"]},
)
report = Step(
    "report",
    write_report,
    parameters={
        "name": best.outputs.parameters["name"],
        "energy": best.outputs.parameters["energy"],
        "threshold": params["threshold"],
    },
    artifacts={"structure": best.outputs.artifacts["structure"]},
    when=best.outputs.parameters["energy"] < params["threshold"],
)
screen.add(gen)
screen.add(relax)
screen.add(best)
screen.add(report)

wf = Workflow("lj-screen", steps=screen)


def main(executor: str = "inline") -> int:
    result = wf.run(executor=executor)
    if not result.succeeded:
        print(f"run {result.run_id} {result.status}")
        for rec in result.query_step(phase="Failed"):
            print(f"  {rec.path}: {rec.error}")
        return 1
    relaxed = result.query_step(name="relax")[0].outputs.parameters["energy"]
    chosen = result.query_step(name="pick-best")[0].outputs.parameters
    print(f"relaxed {len(relaxed)} clusters: " + ", ".join(f"{e:.3f}" for e in relaxed))
    print(f"best candidate: {chosen['name']} with E = {chosen['energy']:.4f} epsilon")
    rep = result.query_step(name="report")[0]
    if rep.phase == "Succeeded":
        print(f"report: {rep.outputs.artifacts['result']}")
    else:
        print("no candidate below the threshold: no report written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "inline"))
