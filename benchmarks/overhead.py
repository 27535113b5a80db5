"""Orchestration overhead of qflow against the floors it is compared with.

``local``: a 50-iteration ``cwltool:Loop`` of a trivial CommandLineTool (benchmarks/cwl/loop.cwl)
through ``qflow run`` (embedded local deployment) and through plain ``cwltool``, alternating,
in the same run. Per-iteration cost is the marginal one, (wall(N) - wall(1)) / (N - 1), so
process start-up (the same for both, measured separately as ``*_startup_s``) does not hide
or inflate it; each figure is the minimum over the repeats (the least disturbed run on a
shared machine, taken the same way for both); ``ratio`` = qflow / cwltool per iteration,
the target is <= 1.2.

Prints a table and writes JSON (default benchmarks/results/overhead.json):
``{"local": {"qflow_s_per_iter", "cwltool_s_per_iter", "ratio", ...}}``.
Run: ``python benchmarks/overhead.py [--iterations 50] [--repeats 3]``.
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

HERE = Path(__file__).resolve().parent
LOOP = HERE / "cwl" / "loop.cwl"


def wall(cmd: list[str], cwd: str) -> float:
    """Wall time of one command; fails loudly if the command fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def loop_commands(count: int, workdir: str) -> dict[str, list[str]]:
    inputs = ["--count", str(count)]
    return {
        "cwltool": [sys.executable, "-m", "cwltool", "--quiet", "--enable-ext",
                    "--outdir", f"{workdir}/out-cwltool", str(LOOP), *inputs],
        "qflow": [sys.executable, "-m", "qflow.cli", "run", "--quiet",
                  "--outdir", f"{workdir}/out-qflow", str(LOOP), "--", *inputs],
    }  # fmt: skip


def measure_local(iterations: int, repeats: int) -> dict[str, float]:
    samples: dict[str, dict[int, list[float]]] = {"cwltool": {}, "qflow": {}}
    with tempfile.TemporaryDirectory(prefix="qflow-bench-") as workdir:
        for _ in range(repeats):
            for count in (1, iterations):
                for tool, cmd in loop_commands(count, workdir).items():
                    samples[tool].setdefault(count, []).append(wall(cmd, workdir))
    result: dict[str, float] = {}
    for tool, by_count in samples.items():
        one, many = min(by_count[1]), min(by_count[iterations])
        result[f"{tool}_s_per_iter"] = (many - one) / (iterations - 1)
        result[f"{tool}_startup_s"] = one
        result[f"{tool}_total_s"] = many
    result["ratio"] = result["qflow_s_per_iter"] / result["cwltool_s_per_iter"]
    result["iterations"] = iterations
    result["repeats"] = repeats
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=str(HERE / "results" / "overhead.json"))
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    local = measure_local(args.iterations, args.repeats)
    results = {"local": local, "load_avg_1min": [load_before, os.getloadavg()[0]]}

    print(f"{'scenario':<10} {'qflow s/iter':>13} {'floor s/iter':>13} {'ratio':>7}  floor")
    print(
        f"{'local':<10} {local['qflow_s_per_iter']:>13.4f} {local['cwltool_s_per_iter']:>13.4f}"
        f" {local['ratio']:>7.2f}  cwltool, {args.iterations}-iteration loop"
    )
    print(f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
