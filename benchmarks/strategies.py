"""The papers' experiment (Tables I and II), reproduced with qflow's allocation strategies.

On a real local Slurm cluster (deployments/local-slurm/cluster.sh: 3 compute nodes + a
quantum node) the clustering workflow runs under every strategy (per-step, held, malleable,
auto), **single** (one workflow) and **double** (two submitted together), with a **long**
quantum phase and a **short** one (< 1 s), several repetitions each. The QUBO solve goes to
one shared emulated QPU (``qflow emulator`` behind a site-wide ``qflow gateway``, one virtual
QPU), so quantum phases hold no classical node. Every classical step takes one whole node.

Everything is the papers' run scaled by ``SCALE`` (1/10): the long quantum phase is their
2 minutes scaled (12 s), and the classical steps last what the papers' phases imply, scaled
the same way (``STEP_SECONDS``; the clustering workflow's ``min_seconds_*`` inputs: each step
does its real work on 800 points, then lasts at least that long). One 2-core host cannot run
three 80 000-point clusterings at once as three nodes would, so node time is emulated as the
QPU's latency is. See docs/benchmarks.md for the derivation.

wall = first start to last end (double: of both workflows); node-s = classical nodes held x
seconds (Slurm's own times), all allocations of all workflows, idle time included.

Prints a table shaped like the papers' Tables I/II with ratios to ``held`` measured in the
same run, writes JSON ``{"scenarios": [{"quantum", "mode", "strategy", "wall_s": [..],
"node_seconds": [..]}], ...}`` and a timeline PNG per scenario (its last repetition).
Run: ``python benchmarks/strategies.py [--repeats 3] [--quick]`` (needs root for Slurm).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from qflow.testing.qpu_services import serve
from qflow.testing.slurm_cluster import start_cluster, stop_cluster

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"
STRATEGIES = ("per-step", "held", "malleable", "auto")
SBATCH_PER_STEP = "per-step-sbatch"
"""per-step with ``submit: sbatch`` (Slurm's 1 s batch tick per step), long single only."""
SCALE = 1 / 10
"""Of the papers' times: their QPU's 120 s and the step lengths their Tables imply."""
STEP_SECONDS = {"kmeans": 25.0, "dbscan": 50.0, "hierarchical": 78.0, "silhouette": 57.0}
"""The papers' step lengths in seconds (docs/benchmarks.md), before SCALE."""
QUANTUM = {  # emulated QPU: backend and latency scale (neutral-atom latency is 120 s)
    "long": ("neutral-atom", SCALE),
    "short": ("superconducting", 1.0),
}
ADMIN_TOKEN_ENV, QPU_TOKEN_ENV = "QFLOW_BENCH_GATEWAY", "QFLOW_BENCH_QPU"


def service(argv: list[str], banner: str, env: dict[str, str]) -> AbstractContextManager[str]:
    """A qflow service process (stderr discarded); yields the URL it announces, stops it by
    PID."""
    return serve(argv, env, banner, stderr=subprocess.DEVNULL, grace=20)


def deployment(strategy: str, gateway: str) -> str:
    per_step = {"per-step": "submit: salloc, ", SBATCH_PER_STEP: "submit: sbatch, "}
    options = f"extra: [--exclusive], {per_step[strategy]}" if strategy in per_step else ""
    allocation = "per-step" if strategy in per_step else strategy
    return (
        "version: 1\nlocations:\n"
        f"  compute: {{connector: slurm, partition: compute, nodes: 1, slots: 3, held_nodes: 3, "
        f"{options}allocation: {allocation}}}\n"
        f"  qpu: {{connector: shared-qpu, gateway: {gateway}, "
        f"gateway_token: '${{env:{ADMIN_TOKEN_ENV}}}', max_wait: 600}}\n"
        "bindings:\n  default: compute\n  /loop/annealing: [qpu, compute]\n"
    )


def run_mode(
    workdir: Path, dep: Path, mode: str, iterations: int, pad: float, env: dict[str, str]
) -> list:
    """Start one or two workflows together; their reports once all have ended."""
    procs = []
    for i in range(2 if mode == "double" else 1):
        outdir = Path(tempfile.mkdtemp(dir=workdir))
        cmd = [
            sys.executable,
            "-m",
            "qflow.cli",
            "run",
            "--quiet",
            "--outdir",
            str(outdir),
            str(CLUSTERING),
            str(dep),
            "--",
            "--n_samples",
            "800",
            "--max_iterations",
            str(iterations),
            "--threshold",
            "0.99",
            "--seed",
            str(i),
            *(f"--min_seconds_{step}={seconds * pad:g}" for step, seconds in STEP_SECONDS.items()),
        ]
        procs.append((subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True), outdir))  # fmt: skip
    reports = []
    for proc, outdir in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a benchmark run failed ({proc.returncode}):\n{err[-3000:]}")
        reports.append(json.loads((outdir / "qflow-report.json").read_text()))
    return reports


def measure(reports: list[dict]) -> tuple[float, float]:
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    return wall, sum(r["totals"]["node_seconds"] for r in reports)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3, help="loop iterations per run")
    quick = "smoke test: 1 repetition, 2 iterations, everything 4x shorter"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--quantum", choices=tuple(QUANTUM), action="append",
                        help="only this quantum phase (repeatable; default: both)")  # fmt: skip
    parser.add_argument("--mode", choices=("single", "double"), action="append",
                        help="only this mode (repeatable; default: both)")  # fmt: skip
    parser.add_argument("--strategy", choices=(*STRATEGIES, SBATCH_PER_STEP), action="append",
                        help="only this strategy (repeatable; default: all; held is the "
                        "reference of the ratios)")  # fmt: skip
    parser.add_argument("--json", default=str(HERE / "results" / "strategies.json"))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what was started
    repeats, iterations, pad = args.repeats, args.iterations, SCALE
    quantum = {k: v for k, v in QUANTUM.items() if not args.quantum or k in args.quantum}
    modes = [m for m in ("single", "double") if not args.mode or m in args.mode]
    if args.quick:
        repeats, iterations, pad = 1, 2, SCALE / 4
        quantum = {k: (b, s / 4 if b == "neutral-atom" else s) for k, (b, s) in quantum.items()}

    from qflow.reporting.timeline import plot_timeline  # matplotlib: only when it runs

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    scenarios: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qflow-strategies-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        cluster = start_cluster(workdir / "cluster")
        stack.callback(stop_cluster, workdir / "cluster")
        env = {**cluster.env, ADMIN_TOKEN_ENV: "bench-admin-token", QPU_TOKEN_ENV: "bench-qpu"}
        for kind, (backend, scale) in quantum.items():
            with ExitStack() as services:
                qpu = services.enter_context(service(
                    ["qflow.emulator", "--port", "0", "--backend", backend,
                     "--time-scale", str(scale)],
                    "qflow emulator listening on", {**env, "QFLOW_EMULATOR_TOKEN": "bench-qpu"},
                ))  # fmt: skip
                site = workdir / f"site-{kind}.yml"
                site.write_text(
                    f"version: 1\nlocations:\n  qpu: {{connector: rest, url: {qpu}, "
                    f"token: '${{env:{QPU_TOKEN_ENV}}}', vqpus: 1}}\nbindings: {{}}\n"
                )
                gateway = services.enter_context(service(
                    ["qflow.gateway", str(site), "--admin-token", f"${{env:{ADMIN_TOKEN_ENV}}}"],
                    "qflow gateway listening on", env,
                ))  # fmt: skip
                for mode in modes:
                    extra = (SBATCH_PER_STEP,) if (kind, mode) == ("long", "single") else ()
                    for strategy in STRATEGIES + extra:
                        if args.strategy and strategy not in args.strategy:
                            continue
                        dep = workdir / f"{strategy}.yml"
                        dep.write_text(deployment(strategy, gateway))
                        walls, node_s = [], []
                        for _ in range(repeats):
                            reports = run_mode(workdir, dep, mode, iterations, pad, env)
                            wall, nodes = measure(reports)
                            walls.append(wall)
                            node_s.append(nodes)
                        plot_timeline(
                            reports,
                            out.parent / f"timeline-{kind}-{mode}-{strategy}.png",
                            title=f"{strategy}, {kind} quantum phase, {mode}",
                        )
                        scenarios.append({"quantum": kind, "mode": mode, "strategy": strategy,
                                          "wall_s": walls, "node_seconds": node_s})  # fmt: skip
                        partial = {"scenarios": scenarios, "complete": False}
                        out.write_text(json.dumps(partial, indent=2) + "\n")
                        print(f"  {kind:5} {mode:6} {strategy:9} wall {walls} node-s {node_s}",
                              flush=True)  # fmt: skip
    results = {
        "scenarios": scenarios,
        "complete": True,
        "repeats": repeats,
        "iterations": iterations,
        "step_min_seconds": {step: seconds * pad for step, seconds in STEP_SECONDS.items()},
        "quantum_latency_s": {
            k: 120 * s if b == "neutral-atom" else 0.2 * s for k, (b, s) in quantum.items()
        },  # fmt: skip
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(scenarios)
    print(f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"written {out} and timeline-<quantum>-<mode>-<strategy>.png beside it")
    return 0


def _stat(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):8.1f} ± {sd:5.1f}"


def print_table(scenarios: list[dict[str, Any]]) -> None:
    print(f"{'quantum':8} {'mode':7} {'strategy':15} {'wall s':>16} {'node-s':>16} "
          f"{'wall/held':>9} {'node-s/held':>11}")  # fmt: skip
    for s in scenarios:
        held = next((h for h in scenarios if h["quantum"] == s["quantum"]
                     and h["mode"] == s["mode"] and h["strategy"] == "held"), None)  # fmt: skip
        ratios = ""
        if held is not None:
            wall_ratio = statistics.mean(s["wall_s"]) / statistics.mean(held["wall_s"])
            node_ratio = statistics.mean(s["node_seconds"]) / statistics.mean(held["node_seconds"])
            ratios = f" {wall_ratio:9.3f} {node_ratio:11.3f}"
        print(f"{s['quantum']:8} {s['mode']:7} {s['strategy']:15} {_stat(s['wall_s']):>16} "
              f"{_stat(s['node_seconds']):>16}{ratios}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
