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

With ``--contention U`` other users' jobs compete for the compute partition: a background
stream (benchmarks/background_load.py: Lublin & Feitelson's workload model, one seed) is
replayed from t=0 for every repetition of every strategy of a scenario, and the papers'
Leonardo ratios are printed beside the measured ones. U is the partition's utilisation: the
background offers U minus what the scenario's own workflows take of the partition on an idle
cluster (their steps' node time over their wall), since on three nodes the workflows are no
small part of the load and a background of U alone would exceed the partition's capacity.

Prints a table shaped like the papers' Tables I/II with ratios to ``held`` measured in the
same run and the mean queue wait per classical step (``started - submitted`` in the reports),
writes JSON ``{"scenarios": [{"quantum", "mode", "strategy", "wall_s": [..], "node_seconds":
[..], "wait_per_step_s": [..]}], ...}`` and a timeline PNG per scenario (its last repetition).
Run: ``python benchmarks/strategies.py [--repeats 3] [--quick] [--contention 0.7]`` (needs
root for Slurm).
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

from background_load import Replay, Stream, generate

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
LEONARDO = {  # the papers' Leonardo runs (single workflow): (wall, node-s) / baseline's
    ("long", "per-step"): (1128 / 1126, 1217 / 3378),
    ("long", "malleable"): (1151 / 1126, 1836 / 3378),
    ("short", "per-step"): (818 / 804, 1241 / 2411),
    ("short", "malleable"): (844 / 804, 1517 / 2411),
}


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
    try:
        for proc, outdir in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"a benchmark run failed ({proc.returncode}):\n{err[-3000:]}")
            reports.append(json.loads((outdir / "qflow-report.json").read_text()))
    finally:  # interrupted (SIGTERM, a failed run): no qflow run outlives the benchmark
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    return reports


def measure(reports: list[dict]) -> tuple[float, float, float]:
    """Wall, node-seconds, and the mean queue wait of a classical step (submitted -> started:
    waiting for Slurm, or for a node of a kept allocation)."""
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    # Slurm's start times are whole seconds: a per-step job can seem to start before qflow
    # submitted it, so a wait is counted from 0
    waits = [max(0.0, s["started"] - s["submitted"]) for r in reports for s in r["steps"]
             if not s["quantum"] and s["status"] == "success"]  # fmt: skip
    node_s = sum(r["totals"]["node_seconds"] for r in reports)
    return wall, node_s, statistics.mean(waits) if waits else 0.0


def own_share(workflows: int, pad: float, quantum_s: float) -> float:
    """What ``workflows`` of the benchmark take of the partition on an idle cluster: their
    steps' node time per iteration over (3 nodes x an iteration's wall: the longest
    clustering, the silhouette, the quantum phase)."""
    work = sum(STEP_SECONDS.values()) * pad
    wall = (max(STEP_SECONDS[s] for s in ("kmeans", "dbscan", "hierarchical"))
            + STEP_SECONDS["silhouette"]) * pad + quantum_s  # fmt: skip
    return workflows * work / (3 * wall)


def background(args: argparse.Namespace, pad: float, share: float) -> Stream | None:
    """A scenario's stream, one for all its strategies (None without --contention): the
    partition's utilisation ``--contention`` less the workflows' own ``share``."""
    if args.contention is None:
        return None
    utilisation = max(0.05, args.contention - share)
    stream_s = 900.0 * pad / SCALE  # covers the longest scenario, queue waits included
    return generate(utilisation, seed=args.bg_seed, duration_s=stream_s,
                    time_scale=pad, max_runtime_s=60.0 * pad / SCALE)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, help="default 3, 5 with --contention")
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
    parser.add_argument(
        "--contention",
        type=float,
        metavar="U",
        help="replay other users' jobs at this utilisation (e.g. 0.7, 0.9)",
    )
    parser.add_argument("--bg-seed", type=int, default=1, help="the background stream's seed")
    parser.add_argument("--json", default=str(HERE / "results" / "strategies.json"))
    parser.add_argument("--table", nargs="+", metavar="JSON",
                        help="only print the table of these result files")  # fmt: skip
    args = parser.parse_args(argv)
    if args.table:
        show(args.table)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what was started
    contended = args.contention is not None
    repeats, iterations, pad = args.repeats or (5 if contended else 3), args.iterations, SCALE
    quantum = {k: v for k, v in QUANTUM.items() if not args.quantum or k in args.quantum}
    modes = [m for m in ("single", "double") if not args.mode or m in args.mode]
    if args.quick:
        repeats, iterations, pad = args.repeats or (5 if contended else 1), 2, SCALE / 4
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
                    latency = 120 * scale if backend == "neutral-atom" else 0.2 * scale
                    share = own_share(2 if mode == "double" else 1, pad, latency)
                    stream = background(args, pad, share)
                    if stream is not None:
                        print(f"  {kind} {mode} background: {json.dumps(stream.summary())}",
                              flush=True)  # fmt: skip
                    sbatch = (kind, mode) == ("long", "single") and not contended
                    extra = (SBATCH_PER_STEP,) if sbatch else ()
                    for strategy in STRATEGIES + extra:
                        if args.strategy and strategy not in args.strategy:
                            continue
                        dep = workdir / f"{strategy}.yml"
                        dep.write_text(deployment(strategy, gateway))
                        walls, node_s, waits = [], [], []
                        for _ in range(repeats):
                            with ExitStack() as load:
                                if stream is not None:  # replayed from t=0 for every run
                                    load.enter_context(Replay(stream, env, workdir / "bg"))
                                reports = run_mode(workdir, dep, mode, iterations, pad, env)
                            wall, nodes, wait = measure(reports)
                            walls.append(wall)
                            node_s.append(nodes)
                            waits.append(wait)
                        plot_timeline(
                            reports,
                            out.parent / f"timeline-{kind}-{mode}-{strategy}.png",
                            title=f"{strategy}, {kind} quantum phase, {mode}",
                        )
                        scenarios.append({"quantum": kind, "mode": mode, "strategy": strategy,
                                          "wall_s": walls, "node_seconds": node_s,
                                          "wait_per_step_s": waits,
                                          "background": stream and stream.summary()})  # fmt: skip
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
        "contention": args.contention,
        "background_seed": args.bg_seed if contended else None,
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(scenarios, leonardo=contended)
    print(f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"written {out} and timeline-<quantum>-<mode>-<strategy>.png beside it")
    return 0


def _stat(values: list[float], digits: int = 1) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):8.{digits}f} ± {sd:5.{digits}f}"


def print_table(scenarios: list[dict[str, Any]], leonardo: bool = False) -> None:
    """Mean ± sd, ratios to held of the same run (with the papers' Leonardo ratios in
    brackets when ``leonardo``), and the mean queue wait per classical step."""
    print(f"{'quantum':8} {'mode':7} {'strategy':15} {'wall s':>16} {'node-s':>16} "
          f"{'wait/step s':>14} {'wall/held':>9} {'node-s/held':>11}")  # fmt: skip
    for s in scenarios:
        held = next((h for h in scenarios if h["quantum"] == s["quantum"]
                     and h["mode"] == s["mode"] and h["strategy"] == "held"), None)  # fmt: skip
        ratios = ""
        if held is not None:
            wall_ratio = statistics.mean(s["wall_s"]) / statistics.mean(held["wall_s"])
            node_ratio = statistics.mean(s["node_seconds"]) / statistics.mean(held["node_seconds"])
            ratios = f" {wall_ratio:9.3f} {node_ratio:11.3f}"
            paper = LEONARDO.get((s["quantum"], s["strategy"])) if leonardo else None
            if paper is not None:
                ratios += f"  (Leonardo {paper[0]:.3f} {paper[1]:.3f})"
        wait = _stat(s.get("wait_per_step_s") or [0.0], 2)
        print(f"{s['quantum']:8} {s['mode']:7} {s['strategy']:15} {_stat(s['wall_s']):>16} "
              f"{_stat(s['node_seconds']):>16} {wait:>14}{ratios}")  # fmt: skip
    for line in dominating_auto(scenarios):
        print(line)


def dominating_auto(scenarios: list[dict[str, Any]], margin: float = 0.05) -> list[str]:
    """Where a strategy beats ``auto`` by more than ``margin`` on both mean wall and mean
    node-seconds (auto is *dominated* there): one line each."""
    lines = []
    for auto in (s for s in scenarios if s["strategy"] == "auto"):
        wall, node_s = statistics.mean(auto["wall_s"]), statistics.mean(auto["node_seconds"])
        for other in scenarios:
            if (other["quantum"], other["mode"]) != (auto["quantum"], auto["mode"]):
                continue
            dw = statistics.mean(other["wall_s"]) / wall - 1
            dn = statistics.mean(other["node_seconds"]) / node_s - 1
            if dw < -margin and dn < -margin:
                lines.append(f"auto dominated in {auto['quantum']} {auto['mode']} by "
                             f"{other['strategy']}: wall {dw:+.1%}, node-s {dn:+.1%}")  # fmt: skip
    return lines or [f"auto is not dominated (by more than {margin:.0%} on both) anywhere"]


def show(paths: list[str]) -> None:
    """The table of saved JSON files (``--table``), partial ones included."""
    scenarios, leonardo = [], False
    for path in paths:
        data = json.loads(Path(path).read_text())
        scenarios += data["scenarios"]
        leonardo = leonardo or data.get("contention") is not None or any(
            s.get("background") for s in data["scenarios"])  # fmt: skip
    print_table(scenarios, leonardo=leonardo)


if __name__ == "__main__":
    sys.exit(main())
