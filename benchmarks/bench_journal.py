"""Durable runs: what the journal costs, and how fast a finished run resumes.

    python benchmarks/bench_journal.py [--steps 10000] [--repeat 3]

Prints, in one run: 10,000 no-op steps on the inline executor with the journal on and off
(target: on <= 1.5x off), and resuming a run whose steps all succeeded (target: < 2 s to
"nothing to do").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from rich.console import Console
from rich.table import Table

from dflow_async import DAG, Step, Workflow, op


@op
async def noop(x: int = 0) -> int:
    return x


def build(n: int) -> Workflow:
    dag = DAG("journal-bench")
    for i in range(n):
        dag.add(Step(f"s{i}", noop, parameters={"x": i}))
    return Workflow("journal-bench", dag=dag)


def best(fn, repeat: int) -> float:
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    return min(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        wf = build(n)
        off = best(lambda: wf.run(journal=False), args.repeat)
        on = best(lambda: wf.run(journal=True), args.repeat)
        finished = wf.run(journal=True)
        assert finished.status == "Succeeded"
        resumed = best(lambda: wf.run(resume=finished.run_id), args.repeat)
        again = wf.run(resume=finished.run_id)
        assert again.status == "Succeeded" and len(again.records) == n
    table = Table(title=f"durable runs: {n:,} no-op steps, inline executor (best of {args.repeat})")
    for col in ("measurement", "wall s", "µs/step", "ratio", "target", "met?"):
        table.add_column(col, justify="right" if col != "measurement" else "left")
    ratio = on / off
    table.add_row("journal off", f"{off:.3f}", f"{off / n * 1e6:.1f}", "", "", "")
    table.add_row(
        "journal on",
        f"{on:.3f}",
        f"{on / n * 1e6:.1f}",
        f"{ratio:.2f}x off",
        "≤ 1.5x",
        "yes" if ratio <= 1.5 else "NO",
    )
    table.add_row(
        "resume, all succeeded", f"{resumed:.3f}", "", "", "< 2 s", "yes" if resumed < 2 else "NO"
    )
    Console().print(table)


if __name__ == "__main__":
    main()
