"""Ratios, targets, the rich tables and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# runner -> (baseline runner, max ratio of µs/step vs that baseline). The sleep shape uses
# SLEEP_TARGET_S instead: its wall time is dominated by the 0.1 s sleep, not by overhead.
TARGETS = {"dflow-async": ("floor-async", 3.0), "dflow-sync": ("dask-threads", 1 / 3)}
# runner -> a second baseline, shown beside the target's: the floor for sync work kept off the
# event loop (a chain pays one loop <-> thread round trip per step there too)
ALSO = {"dflow-sync": "floor-thread"}
SLEEP_TARGET_S = 0.5
MEMORY_TARGET_MIB = 1024.0


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill ``baseline``/``ratio``/``target``/``met`` on the dflow rows, in place."""
    by_key = {(r["shape"], r["runner"]): r for r in rows if r.get("wall_s") is not None}
    for row in rows:
        if row["runner"] not in TARGETS:
            continue
        base_name, max_ratio = TARGETS[row["runner"]]
        row["baseline"] = base_name
        base = by_key.get((row["shape"], base_name))
        if row.get("wall_s") is not None and base is not None:
            row["ratio"] = row["wall_s"] / base["wall_s"]  # same steps: µs/step ratio
        also = by_key.get((row["shape"], ALSO.get(row["runner"], "")))
        if row.get("wall_s") is not None and also is not None:
            row["also"] = (also["runner"], row["wall_s"] / also["wall_s"])
        if row["kind"] == "sleep":
            row["target"] = f"wall < {SLEEP_TARGET_S} s"
            row["met"] = row.get("wall_s") is not None and row["wall_s"] < SLEEP_TARGET_S
        else:
            row["target"] = f"≤ {max_ratio:.2g}x {base_name}"
            row["met"] = row.get("ratio") is not None and row["ratio"] <= max_ratio


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _met(row: dict[str, Any]) -> str:
    if "met" not in row:
        return ""
    return "[green]yes[/]" if row["met"] else "[red]NO[/]"


def print_tables(console: Console, rows: list[dict[str, Any]], memory: list[dict[str, Any]]):
    t = Table(title="dflow-async core scheduler vs baselines (best of repeats)")
    for col in ("shape", "runner", "steps", "build s", "wall s", "µs/step", "steps/s"):
        t.add_column(col, justify="left" if col in ("shape", "runner") else "right")
    for col in ("ratio vs baseline", "target", "met?"):
        t.add_column(col)
    last_shape = None
    for r in rows:
        if last_shape is not None and r["shape"] != last_shape:
            t.add_section()
        last_shape = r["shape"]
        per_step = r["kind"] != "sleep"  # sleep shape: wall only
        ratio = f"{r['ratio']:.2f}x {r['baseline']}" if r.get("ratio") is not None else ""
        if r.get("also"):
            ratio += f"\n{r['also'][1]:.2f}x {r['also'][0]}"
        wall = _fmt(r.get("wall_s"), ".3f") if not r.get("error") else "[red]FAILED[/]"
        t.add_row(
            r["shape"],
            r["runner"],
            str(r["steps"]),
            _fmt(r.get("build_s"), ".3f"),
            wall,
            _fmt(r.get("us_per_step") if per_step else None, ".1f"),
            _fmt(r.get("steps_per_s") if per_step else None, ",.0f"),
            ratio,
            r.get("target", ""),
            _met(r),
        )
    console.print(t)
    if memory:
        m = Table(title="Peak RSS growth, one run in a fresh process")
        for col in ("shape", "runner", "steps", "build s", "wall s", "peak RSS growth MiB"):
            m.add_column(col, justify="left" if col in ("shape", "runner") else "right")
        m.add_column("target")
        m.add_column("met?")
        for r in memory:
            failed = "[red]FAILED[/]" if r.get("error") else None
            m.add_row(
                r["shape"],
                r["runner"],
                str(r["steps"]),
                _fmt(r.get("build_s"), ".2f"),
                failed or _fmt(r.get("wall_s"), ".2f"),
                _fmt(r.get("peak_mib"), ",.0f"),
                r.get("target", ""),
                _met(r),
            )
        console.print(m)
    for r in [*rows, *memory]:
        if r.get("error"):
            console.print(f"[red]{r['shape']} / {r['runner']} failed:[/]\n{r['error']}")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
