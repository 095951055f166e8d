"""A loop by recursion: Newton-Raphson on Kepler's equation until it converges.

Where is a planet on its orbit at a given time? Kepler's equation M = E - e sin(E) links the
mean anomaly M (proportional to time) to the eccentric anomaly E (the position). It has no
closed-form solution; Newton's method solves it:

    E <- E - (E - e sin E - M) / (1 - e cos E)

The loop is the pattern of Dflow's concurrent-learning workflows (DP-GEN's
train / explore / label iterations): a ``Steps`` template that contains one iteration and then
a ``Step`` whose template is the ``Steps`` itself, guarded by ``when=``. Each iteration's
update step carries ``key=f"iter-{iter}"`` so ``result.query_step(key="iter-3")`` finds it.
The loop's outputs use ``if_expression``: when the recursion goes on they come from the next
iteration, otherwise from this one (the branch not taken is never evaluated, so it may point
at the skipped ``next`` step).

``limit`` caps the iterations: ``wf.run(parameters={"limit": 2})`` stops early, unconverged.

Run: ``PYTHONPATH=src python examples/recursion_loop.py [inline|process]``.
"""

import math
import sys
from typing import TypedDict

from dflow_async import OutputParameter, Step, Steps, Workflow, if_expression, op


class Update(TypedDict):
    E: float
    residual: float
    converged: bool


@op
def newton_update(M: float, e: float, E: float, tol: float) -> Update:
    """One Newton step on f(E) = E - e sin E - M."""
    E_new = E - (E - e * math.sin(E) - M) / (1.0 - e * math.cos(E))
    residual = abs(E_new - e * math.sin(E_new) - M)
    return Update(E=E_new, residual=residual, converged=residual < tol)


loop = Steps(
    "kepler-newton",
    # a highly eccentric orbit (e = 0.95) shortly after periapsis; E0 = pi is the robust start
    inputs={"M": 0.3, "e": 0.95, "E": math.pi, "tol": 1e-12, "iter": 0, "limit": 30},
)
p = loop.inputs.parameters

update = Step(
    "newton-update",
    newton_update,
    parameters={"M": p["M"], "e": p["e"], "E": p["E"], "tol": p["tol"]},
    key=f"iter-{p['iter']}",
)
go_on = ~update.outputs.parameters["converged"] & (p["iter"] + 1 < p["limit"])
following = Step(
    "next",
    loop,  # recursion: the template is the loop itself
    parameters={
        "M": p["M"],
        "e": p["e"],
        "E": update.outputs.parameters["E"],
        "tol": p["tol"],
        "iter": p["iter"] + 1,
        "limit": p["limit"],
    },
    when=go_on,
)
loop.add(update)
loop.add(following)

for name in ("E", "residual", "converged"):
    loop.outputs.parameters[name] = OutputParameter(
        value_from_expression=if_expression(
            _if=go_on,
            _then=following.outputs.parameters[name],
            _else=update.outputs.parameters[name],
        )
    )
loop.outputs.parameters["iterations"] = OutputParameter(
    value_from_expression=if_expression(
        _if=go_on, _then=following.outputs.parameters["iterations"], _else=p["iter"] + 1
    )
)

wf = Workflow("kepler", steps=loop)


def main(executor: str = "inline") -> int:
    result = wf.run(executor=executor)
    if not result.succeeded:
        print(f"run {result.run_id} {result.status}")
        for rec in result.query_step(phase="Failed"):
            print(f"  {rec.path}: {rec.error}")
        return 1
    for rec in result.query_step(name="newton-update"):
        out = rec.outputs.parameters
        print(f"  {rec.key:<8} E = {out['E']:.15f}  |f(E)| = {out['residual']:.2e}")
    out = result.outputs["parameters"]
    state = "converged" if out["converged"] else "stopped at the iteration limit"
    print(f"{state} after {out['iterations']} iterations: E = {out['E']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "inline"))
