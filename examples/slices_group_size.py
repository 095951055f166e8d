"""1,000 tiny slices, batched: a Monte Carlo estimate of pi.

``seeds`` draws one independent seed per slice from a master seed. ``sample`` is tiny: it
throws ``n`` random points into the unit square and counts those inside the quarter circle.
Fanning it out as 1,000 separate attempts would spend more time moving attempts around than
computing, so ``Slices(group_size=50)`` runs 50 slices per attempt (20 attempts in all) and
``pool_size=4`` runs at most four of those attempts at a time. The outputs still come back as
one list in slice order, as if every slice had run on its own; ``estimate`` reduces them to
pi = 4 * hits / throws and its binomial standard error.

Run: ``PYTHONPATH=src python examples/slices_group_size.py [inline|process]``.
"""

import math
import random
import sys
from typing import TypedDict

from dflow_async import Slices, Step, Workflow, op

N_SLICES = 1000
THROWS_PER_SLICE = 500


@op
def seeds(n: int, master_seed: int) -> list[int]:
    """Independent per-slice seeds from one master seed."""
    rng = random.Random(master_seed)
    return [rng.getrandbits(32) for _ in range(n)]


@op
def sample(seed: int, throws: int) -> int:
    """Points of the unit square that fall inside the quarter circle x^2 + y^2 <= 1."""
    rng = random.Random(seed)
    rand = rng.random
    hits = 0
    for _ in range(throws):
        x, y = rand(), rand()
        hits += x * x + y * y <= 1.0
    return hits


class Estimate(TypedDict):
    pi: float
    stderr: float
    total: int


@op
def estimate(hits: list[int], throws: int) -> Estimate:
    """pi = 4 p with p the hit fraction; stderr = 4 sqrt(p (1 - p) / N)."""
    total = throws * len(hits)
    p = sum(hits) / total
    return Estimate(pi=4.0 * p, stderr=4.0 * math.sqrt(p * (1.0 - p) / total), total=total)


make_seeds = Step("seeds", seeds, parameters={"n": N_SLICES, "master_seed": 2024})
throw = Step(
    "sample",
    sample,
    parameters={"seed": make_seeds.outputs.parameters["result"], "throws": THROWS_PER_SLICE},
    slices=Slices(
        input_parameter=["seed"], output_parameter=["result"], group_size=50, pool_size=4
    ),
)
reduce = Step(
    "estimate",
    estimate,
    parameters={"hits": throw.outputs.parameters["result"], "throws": THROWS_PER_SLICE},
)

wf = Workflow("monte-carlo-pi")
wf.add(make_seeds)
wf.add(throw)
wf.add(reduce)


def main(executor: str = "inline") -> int:
    result = wf.run(executor=executor)
    if not result.succeeded:
        print(f"run {result.run_id} {result.status}")
        for rec in result.query_step(phase="Failed"):
            print(f"  {rec.path}: {rec.error}")
        return 1
    fan = result.query_step(name="sample")[0]
    out = result.query_step(name="estimate")[0].outputs.parameters
    print(f"{fan.slices} slices in {fan.attempts} attempts, {fan.duration:.2f} s")
    print(
        f"pi ~ {out['pi']:.5f} +- {out['stderr']:.5f} from {out['total']:,} throws "
        f"(error {out['pi'] - math.pi:+.5f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "inline"))
