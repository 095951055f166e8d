"""Tolerating failures: a parameter scan where some simulations diverge, and a flaky service.

The scan integrates the decay equation y' = -k y, y(0) = 1, with the explicit Euler method
and a fixed step dt. Euler multiplies y by (1 - k dt) every step, so it is stable only while
k dt < 2; for the stiffer rates the solution blows up and the slice raises. That failure is
deterministic and expected, so the fan-out is declared to tolerate it:
``continue_on_success_ratio=0.7`` lets the step succeed while at least 70 % of the slices do;
the failed slices' outputs are ``None`` in the stacked lists.

``stability-limit`` stands for a call to a flaky external service (a license server, a
database): its first two attempts raise ``TransientError``, and ``retries=3`` lets the
scheduler try again (with a short exponential backoff) until it answers. It uses the attempt
number from ``current_context()``, so the example is deterministic on every executor.

``classify`` keeps the non-None results and checks the scan against the theory: every rate
that diverged lies above the limit 2 / dt, every one that ran lies below it.

Run: ``PYTHONPATH=src python examples/failure_tolerance.py [inline|process]``.
"""

import math
import sys
from typing import TypedDict

from dflow_async import Slices, Step, TransientError, Workflow, current_context, op

RATES = [0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 19.0, 25.0, 40.0]
DT = 0.1
T_END = 10.0


class Diverged(ArithmeticError):
    """The integration blew up."""


class Trajectory(TypedDict):
    max_error: float
    y_end: float


class Summary(TypedDict):
    stable: list[float]
    diverged: list[float]
    worst_error: float
    matches_theory: bool


@op
def euler_decay(k: float, dt: float, t_end: float) -> Trajectory:
    """Integrate y' = -k y with explicit Euler; the largest error against exp(-k t)."""
    y = 1.0
    max_error = 0.0
    for n in range(1, round(t_end / dt) + 1):
        y *= 1.0 - k * dt
        if abs(y) > 1e6:
            raise Diverged(f"k = {k}: |y| = {abs(y):.3g} at t = {n * dt:.1f}, k dt = {k * dt:g}")
        max_error = max(max_error, abs(y - math.exp(-k * n * dt)))
    return Trajectory(max_error=max_error, y_end=y)


@op
def stability_limit(dt: float, fail_attempts: int) -> float:
    """The theoretical stability bound of explicit Euler for decay, k < 2 / dt, served by a
    'remote service' that fails its first ``fail_attempts`` calls."""
    attempt = current_context().attempt
    if attempt < fail_attempts:
        raise TransientError(f"service busy (attempt {attempt}), try again")
    return 2.0 / dt


@op
def classify(rates: list[float], errors: list[float | None], limit: float) -> Summary:
    """Keep the slices that produced a result; compare the boundary with the theory."""
    stable = [k for k, err in zip(rates, errors, strict=True) if err is not None]
    diverged = [k for k, err in zip(rates, errors, strict=True) if err is None]
    worst = max(err for err in errors if err is not None)
    ok = all(k < limit for k in stable) and all(k > limit for k in diverged)
    return Summary(stable=stable, diverged=diverged, worst_error=worst, matches_theory=ok)


scan = Step(
    "euler-scan",
    euler_decay,
    parameters={"k": RATES, "dt": DT, "t_end": T_END},
    slices=Slices(input_parameter=["k"], output_parameter=["max_error", "y_end"]),
    continue_on_success_ratio=0.7,
)
limit = Step(
    "stability-limit", stability_limit, parameters={"dt": DT, "fail_attempts": 2}, retries=3
)
summary = Step(
    "classify",
    classify,
    parameters={
        "rates": RATES,
        "errors": scan.outputs.parameters["max_error"],
        "limit": limit.outputs.parameters["result"],
    },
)

wf = Workflow("euler-stability")
wf.add([scan, limit])  # one group: the two run in parallel
wf.add(summary)


def main(executor: str = "inline") -> int:
    result = wf.run(executor=executor)
    if not result.succeeded:
        print(f"run {result.run_id} {result.status}")
        for rec in result.query_step(phase="Failed"):
            print(f"  {rec.path}: {rec.error}")
        return 1
    fan = result.query_step(name="euler-scan")[0]
    print(f"scan: {fan.slices - fan.failed_slices}/{fan.slices} slices succeeded")
    for error in fan.errors:
        print(f"  tolerated: {error}")
    svc = result.query_step(name="stability-limit")[0]
    print(
        f"stability-limit answered after {svc.attempts} attempts: k dt < 2, k < "
        f"{svc.outputs.parameters['result']:g}"
    )
    out = result.query_step(name="classify")[0].outputs.parameters
    print(f"stable k: {out['stable']}; diverged k: {out['diverged']}")
    print(
        f"worst Euler error among stable runs: {out['worst_error']:.3g}; "
        f"matches theory: {out['matches_theory']}"
    )
    return 0 if out["matches_theory"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "inline"))
