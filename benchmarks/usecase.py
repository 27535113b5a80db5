"""The reference use case's classical steps at the papers' size: wall time and peak memory.

Runs one loop iteration of workflows/clustering-aggregation step by step, each step as its own
``python3 clagg.py <step>`` process as the workflow's tools run it (interpreter and imports
included), at several sizes (default 3 000, 20 000 and the papers' 80 000 points; make_blobs
with 8 centres, 2 features, random_state 0x1337, as the workflow generates them). The
silhouette is the exact one (``--sample 0``), as in the papers. Peak memory is the step
process's maximum resident set (``os.wait4``'s ru_maxrss).

Targets at 80 000 points: the three clusterings plus the silhouette together under
``TARGET_S`` (the papers' classical phase per iteration on 3 nodes: the longest clustering,
78 s, then the silhouette, 57 s; docs/benchmarks.md), every step under ``LIMIT_MIB``.
Prints a table and writes JSON (default benchmarks/results/usecase.json).
Run: ``python benchmarks/usecase.py [--sizes 3000 20000 80000] [--seed 0] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLAGG = HERE.parent / "workflows" / "clustering-aggregation" / "clagg.py"
SIZES = (3000, 20000, 80000)
CLUSTERINGS = ("kmeans", "dbscan", "hierarchical")
TARGET_S = 135.0
"""The papers' classical phase per iteration: hierarchical (78 s) then silhouette (57 s)."""
LIMIT_MIB = 4096.0


def run_step(argv: list[str], cwd: Path) -> dict[str, float]:
    """One clagg.py step as its own process: wall seconds and peak resident MiB."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(CLAGG), *argv], cwd=cwd,
                            stdout=subprocess.DEVNULL)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode:
        raise SystemExit(f"clagg.py {' '.join(argv)} failed with exit code {proc.returncode}")
    return {"wall_s": round(wall, 3), "peak_mib": round(usage.ru_maxrss / 1024, 1)}


def one_iteration(n: int, seed: int, work: Path) -> dict[str, dict[str, float]]:
    """Every step of one iteration on n points, in the workflow's order."""
    labels = [a for m in CLUSTERINGS for a in (f"--{m}", f"{m}.npy")]
    steps = {
        "generate": ["generate", "--n-samples", str(n), "--output", "points.npy"],
        **{m: [m, "--points", "points.npy", "--seed", str(seed)] for m in CLUSTERINGS},
        "qubo": ["qubo", *labels],
        "solve": ["solve", "--qubo", "qubo.json", "--seed", str(seed)],
        "silhouette": ["silhouette", "--points", "points.npy", "--qubo", "qubo.json",
                       "--solution", "solution.json", *labels, "--sample", "0"],
    }  # fmt: skip
    measured = {}
    for name, argv in steps.items():
        measured[name] = run_step(argv, work)
        print(f"  {n:6} {name:12} {measured[name]['wall_s']:8.2f} s "
              f"{measured[name]['peak_mib']:8.0f} MiB", flush=True)  # fmt: skip
    score = json.loads((work / "score.json").read_text())
    measured["silhouette"]["score"] = score["score"]
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--seed", type=int, default=0, help="the iteration's seed")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3000 points only")
    parser.add_argument("--json", default=str(HERE / "results" / "usecase.json"))
    args = parser.parse_args(argv)
    sizes = [3000] if args.quick else args.sizes
    load_before = os.getloadavg()[0]
    results: list[dict[str, Any]] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="qflow-usecase-") as tmp:
            steps = one_iteration(n, args.seed, Path(tmp))
        classical = sum(steps[s]["wall_s"] for s in (*CLUSTERINGS, "silhouette"))
        peak = max(s["peak_mib"] for s in steps.values())
        results.append({"n": n, "steps": steps, "classical_s": round(classical, 3),
                        "max_peak_mib": peak})  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "sizes": results,
        "seed": args.seed,
        "target_s": TARGET_S,
        "limit_mib": LIMIT_MIB,
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print_table(results)
    print(f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"written {out}")
    return 0


def print_table(results: list[dict[str, Any]]) -> None:
    names = list(results[0]["steps"]) if results else []
    print(f"{'points':>7} " + " ".join(f"{name:>12}" for name in names)
          + f" {'clust.+sil.':>11} {'target':>7}")  # fmt: skip
    for r in results:
        cells = " ".join(f"{s['wall_s']:6.1f}s{s['peak_mib']:4.0f}M" for s in r["steps"].values())
        ok = r["classical_s"] <= TARGET_S and r["max_peak_mib"] <= LIMIT_MIB
        print(f"{r['n']:7} {cells} {r['classical_s']:10.1f}s {'met' if ok else 'MISSED':>7}")
    print(
        "cells: wall seconds and peak resident MiB of the step's process; clust.+sil.: "
        f"kmeans + dbscan + hierarchical + silhouette, target <= {TARGET_S:.0f} s and every "
        f"step <= {LIMIT_MIB:.0f} MiB"
    )


if __name__ == "__main__":
    sys.exit(main())
