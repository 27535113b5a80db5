"""Placement rules: ``first`` against ``earliest-finish`` with two QPUs of different speeds.

Two ``qflow emulator`` processes on 127.0.0.1 are two physical QPUs that execute one task at
a time: ``qpu-slow`` (neutral-atom backend) and ``qpu-fast`` (superconducting backend), with
one shared ``--time-scale`` (``TIME_SCALE``: a neutral-atom task takes ~10 s, several times a
whole classical simulated-annealing solve; a superconducting one a few hundredths of a second
plus the solve). Every workflow is its own ``qflow run`` process of the clustering workflow
(workflows/clustering-aggregation) reaching both QPUs with the ``rest`` connector, and running
its classical steps, and simulated annealing (SA) when that is chosen, on ``local`` slots.
So workflows that run together really share the two QPUs' queues.

The quantum candidate ``/loop/annealing`` is bound five ways (``STRATEGIES``): ``first`` and
``earliest-finish`` over [qpu-slow, qpu-fast, local], and the fixed choices ``slow-only``
[qpu-slow, local], ``fast-only`` [qpu-fast, local] and ``classical`` [local]. Scenarios:
``contended`` (``--workflows`` N >= 4 started together) and ``uncontended`` (one workflow).
Every run gets a fresh placement history file (``policy.history``), so no run learns from
another; within a run, later loop iterations learn from earlier ones.

Measured from the run reports and the emulators' ``GET /v1/stats``, per scenario and strategy
(means over ``--repeats``; the strategies alternate within each repeat, so the ratios are
taken within one run of this command on a noisy machine):

* makespan: a workflow's ``wall_s``; mean over all workflows, max = the slowest workflow of
  a batch (averaged over repeats);
* annealing time: per workflow, the sum of its ``/loop/annealing`` executions' ``ended -
  submitted`` (the part of the makespan placement decides; its ratios are reported too);
* QPU busy fraction: QPU time of the tasks each emulator ran within the batch's span (first
  workflow start to last end) / that span;
* fallbacks: step executions recorded ``fallback: true`` (earliest-finish records a deliberate
  choice of SA as a fallback too, with the reason ``expected to finish first here``);
* estimate error: over the earliest-finish placements, the median of
  |estimate[chosen] - (ended - submitted)| / (ended - submitted).

Targets: ``earliest_finish_vs_first`` (mean makespan ratio) <= 0.8 in the contended scenario
and ``earliest_finish_vs_best_fixed`` <= 1.05 in every scenario. Prints a table and writes JSON
(default benchmarks/results/placement.json).
Run: ``python benchmarks/placement.py [--workflows 4] [--repeats 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from qflow.testing.processes import stop
from qflow.testing.qpu_services import serve

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"
STEP = "/loop/annealing"
TOKEN_ENV = "QFLOW_BENCH_PLACEMENT_QPU_TOKEN"
TIME_SCALE = 0.08
"""Of both emulators' latencies: neutral-atom 120 s -> 9.6 s (several SA solves of the step,
0.4-2.5 s each here), superconducting 0.2 s -> 16 ms."""
QPUS = {"qpu-slow": "neutral-atom", "qpu-fast": "superconducting"}
LOCAL_SLOTS = 4
"""Per workflow: its three clusterings run side by side, plus one more step."""
STRATEGIES = {  # name -> (candidates of /loop/annealing, placement rule)
    "first": (["qpu-slow", "qpu-fast", "local"], "first"),
    "earliest-finish": (["qpu-slow", "qpu-fast", "local"], "earliest-finish"),
    "slow-only": (["qpu-slow", "local"], "first"),
    "fast-only": (["qpu-fast", "local"], "first"),
    "classical": (["local"], "first"),
}
FIXED = ("slow-only", "fast-only", "classical")
STEP_SECONDS = {"kmeans": 10.0, "dbscan": 11.0, "hierarchical": 12.0, "silhouette": 6.0}
"""Least duration of the classical steps (the workflow's ``min_seconds_*`` inputs): each does
its real work on ``--n-samples`` points (a few seconds, mostly importing scikit-learn), then
sleeps the rest, so that N workflows whose clusterings run at the same time do not turn the
comparison into a CPU contest on a 2-core host (on a loaded host they do not quite manage
that; ``--quick`` shortens them). Simulated annealing is not padded: it is what is compared."""
QUICK_PAD = 0.6
"""``--quick``: factor on ``STEP_SECONDS``."""
TARGET_VS_FIRST = 0.8
TARGET_VS_BEST_FIXED = 1.05
BATCH_TIMEOUT_S = 1800.0


@contextmanager
def emulator(backend: str, time_scale: float, token: str, log: Path) -> Any:
    """A ``qflow emulator`` process (one QPU, stderr to ``log``); yields its URL, stops it by
    PID."""
    argv = ["qflow.emulator", "--port", "0", "--backend", backend, "--time-scale", str(time_scale)]
    with open(log, "w") as err, serve(argv, {"QFLOW_EMULATOR_TOKEN": token},
                                      "qflow emulator listening on", stderr=err, grace=20,
                                      new_session=True) as url:  # fmt: skip
        yield url


def qpu_get(url: str, path: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/v1/{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_idle(qpus: dict[str, str], token: str, timeout: float = 60.0) -> None:
    """Wait until no QPU runs or queues a task (nothing left over from the previous batch)."""
    deadline = time.monotonic() + timeout
    while True:
        status = [qpu_get(url, "status", token) for url in qpus.values()]
        if all(s["running"] == 0 and s["pending"] == 0 for s in status):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the QPUs still have tasks {timeout:g} s after a batch: {status}")
        time.sleep(0.5)


def deployment(qpus: dict[str, str], strategy: str, history: Path, slots: int) -> str:
    candidates, rule = STRATEGIES[strategy]
    lines = ["version: 1", "locations:", f"  local: {{connector: local, slots: {slots}}}"]
    for name, url in qpus.items():
        if name in candidates:
            lines.append(
                f"  {name}: {{connector: rest, url: '{url}', token: '${{env:{TOKEN_ENV}}}', "
                f"backend: {QPUS[name]}, vqpus: 1, max_wait: 600}}"
            )
    lines += [
        "bindings:",
        "  default: local",
        f"  {STEP}: {{locations: [{', '.join(candidates)}], placement: {rule}}}",
        f"policy: {{history: '{history}'}}",
    ]
    return "\n".join(lines) + "\n"


def run_batch(
    workdir: Path,
    qpus: dict[str, str],
    strategy: str,
    workflows: int,
    args: argparse.Namespace,
    env: dict[str, str],
) -> list[dict[str, Any]]:
    """Start ``workflows`` runs of the clustering workflow together; their reports."""
    procs: list[tuple[subprocess.Popen[Any], Path]] = []
    try:
        for i in range(workflows):
            run = Path(tempfile.mkdtemp(prefix=f"{strategy}-{i}-", dir=workdir))
            dep = run / "deployment.yml"
            dep.write_text(deployment(qpus, strategy, run / "history.json", args.local_slots))
            cmd = [
                sys.executable, "-m", "qflow.cli", "run", "--quiet", "--outdir",
                str(run / "out"), str(CLUSTERING), str(dep), "--",
                "--n_samples", str(args.n_samples), "--max_iterations", str(args.iterations),
                "--threshold", "0.99", "--seed", str(10 * i),
                *(f"--min_seconds_{step}={s * args.pad:g}" for step, s in STEP_SECONDS.items()),
            ]  # fmt: skip
            with open(run / "qflow.log", "w") as log:
                proc = subprocess.Popen(cmd, cwd=run, env=env, stdout=subprocess.DEVNULL,
                                        stderr=log, start_new_session=True)  # fmt: skip
            procs.append((proc, run))
        deadline = time.monotonic() + BATCH_TIMEOUT_S
        reports = []
        for proc, run in procs:
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise SystemExit(
                    f"{strategy}: a run took over {BATCH_TIMEOUT_S:g} s: {run}"
                ) from None
            if proc.returncode != 0:
                log = (run / "qflow.log").read_text()[-3000:]
                raise SystemExit(f"{strategy}: a run failed ({proc.returncode}), {run}:\n{log}")
            reports.append(json.loads((run / "out" / "qflow-report.json").read_text()))
        return reports
    finally:
        for proc, _ in procs:
            stop(proc, 30)


def busy_fraction(stats: dict[str, Any], begin: float, end: float) -> float:
    """QPU time of the tasks within [begin, end] / (end - begin)."""
    busy = sum(
        max(0.0, min(end, t["ended"]) - max(begin, t["started"])) for t in stats["tasks"]
    )  # fmt: skip
    return busy / (end - begin) if end > begin else 0.0


def measure(reports: list[dict[str, Any]], stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One batch's figures (see the module doc)."""
    begin = min(r["started"] for r in reports)
    end = max(r["ended"] for r in reports)
    placements: collections.Counter[str] = collections.Counter()
    decisions = []
    annealing = []
    for w, report in enumerate(reports):
        annealing.append(0.0)
        for s in report["steps"]:
            if s["step"] != STEP:
                continue
            placements[s["location"]] += 1
            annealing[-1] += s["ended"] - s["submitted"]
            if s.get("estimate"):
                actual = s["ended"] - s["submitted"]
                expected = s["estimate"].get(s["location"])
                decisions.append({
                    "workflow": w, "iteration": s["iteration"], "location": s["location"],
                    "fallback": s["fallback"], "estimate": s["estimate"],
                    "actual_s": round(actual, 3),
                    "rel_error": None if expected is None or actual <= 0
                    else round(abs(expected - actual) / actual, 4),
                    "placement_reason": s.get("placement_reason"),
                    "fallback_reason": s.get("fallback_reason"),
                })  # fmt: skip
    return {
        "makespans_s": [round(r["wall_s"], 3) for r in reports],
        "annealing_s": [round(a, 3) for a in annealing],
        "span_s": round(end - begin, 3),
        "qpu_busy_fraction": {q: round(busy_fraction(stats[q], begin, end), 4) for q in QPUS},
        "fallbacks": sum(r["totals"]["fallbacks"] for r in reports),
        "annealing_executions": sum(placements.values()),
        "annealing_locations": dict(placements),
        "qpu_seconds": round(sum(r["totals"]["qpu_seconds"] for r in reports), 3),
        "decisions": decisions,
    }


def summarise(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """A scenario's strategy over its repeats."""
    makespans = [m for b in batches for m in b["makespans_s"]]
    errors = [d["rel_error"] for b in batches for d in b["decisions"] if d["rel_error"] is not None]
    locations: collections.Counter[str] = collections.Counter()
    for b in batches:
        locations.update(b["annealing_locations"])
    return {
        "mean_makespan_s": round(statistics.fmean(makespans), 3),
        "mean_annealing_s": round(
            statistics.fmean(a for b in batches for a in b["annealing_s"]), 3
        ),
        "max_makespan_s": round(statistics.fmean(max(b["makespans_s"]) for b in batches), 3),
        "qpu_busy_fraction": {
            q: round(statistics.fmean(b["qpu_busy_fraction"][q] for b in batches), 4) for q in QPUS
        },
        "fallbacks": sum(b["fallbacks"] for b in batches),
        "annealing_executions": sum(b["annealing_executions"] for b in batches),
        "annealing_locations": dict(locations),
        "median_estimate_error": round(statistics.median(errors), 4) if errors else None,
        "estimates": len(errors),
        "batches": batches,
    }


def ratios(strategies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean makespan of earliest-finish over first's and over the best fixed choice's; the
    same for the annealing step's time alone (``annealing_*``: the part placement decides)."""
    out: dict[str, Any] = {}
    for prefix, key in (("", "mean_makespan_s"), ("annealing_", "mean_annealing_s")):
        mean = {name: s[key] for name, s in strategies.items()}
        if "earliest-finish" not in mean:
            continue
        ef = mean["earliest-finish"]
        if "first" in mean and mean["first"] > 0:
            out[f"{prefix}earliest_finish_vs_first"] = round(ef / mean["first"], 4)
        fixed = {name: mean[name] for name in FIXED if name in mean}
        if fixed:
            best = min(fixed, key=fixed.__getitem__)
            out[f"{prefix}best_fixed"] = best
            if fixed[best] > 0:
                out[f"{prefix}earliest_finish_vs_best_fixed"] = round(ef / fixed[best], 4)
    return out


def targets(scenario: str, r: dict[str, Any]) -> dict[str, bool]:
    met = {}
    if scenario == "contended" and "earliest_finish_vs_first" in r:
        met["earliest_finish_vs_first"] = r["earliest_finish_vs_first"] <= TARGET_VS_FIRST
    if "earliest_finish_vs_best_fixed" in r:
        met["earliest_finish_vs_best_fixed"] = (
            r["earliest_finish_vs_best_fixed"] <= TARGET_VS_BEST_FIXED
        )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    contended = "workflows started together in the contended scenario (>= 4)"
    parser.add_argument("--workflows", type=int, default=4, help=contended)
    parser.add_argument("--repeats", type=int, help="default 2 (--quick 1)")
    parser.add_argument("--iterations", type=int, help="loop iterations per run: 3 (--quick 1)")
    parser.add_argument("--n-samples", type=int, default=300, help="points per workflow")
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE,
                        help="factor on both emulators' latencies")  # fmt: skip
    parser.add_argument("--local-slots", type=int, default=LOCAL_SLOTS)
    parser.add_argument("--scenario", choices=("contended", "uncontended"), action="append",
                        help="only this scenario (repeatable; default: both)")  # fmt: skip
    parser.add_argument("--strategy", choices=tuple(STRATEGIES), action="append",
                        help="only this strategy (repeatable; default: all)")  # fmt: skip
    quick = "a few minutes: 1 repeat, 1 iteration, shorter classical steps"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--workdir", help="keep every run (deployment, log, report) here")
    parser.add_argument("--json", default=str(HERE / "results" / "placement.json"))
    args = parser.parse_args(argv)
    if args.workflows < 4:
        parser.error("--workflows: the contended scenario needs at least 4 workflows")
    quick = dict(repeats=1, iterations=1, pad=QUICK_PAD)
    full = dict(repeats=2, iterations=3, pad=1.0)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what was started
    scenarios = {"contended": args.workflows, "uncontended": 1}
    scenarios = {k: v for k, v in scenarios.items() if not args.scenario or k in args.scenario}
    strategies = [s for s in STRATEGIES if not args.strategy or s in args.strategy]

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    env = {**os.environ, TOKEN_ENV: token}
    load_before = os.getloadavg()
    began = time.time()
    batches: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in scenarios}
    params = {
        "workflows": args.workflows,
        "repeats": args.repeats,
        "iterations": args.iterations,
        "n_samples": args.n_samples,
        "time_scale": args.time_scale,
        "qpu_latency_s": {"qpu-slow": 120 * args.time_scale, "qpu-fast": 0.2 * args.time_scale},
        "local_slots": args.local_slots,
        "step_min_seconds": {step: round(s * args.pad, 3) for step, s in STEP_SECONDS.items()},
        "quick": args.quick,
        "strategies": {
            s: {"candidates": STRATEGIES[s][0], "placement": STRATEGIES[s][1]} for s in strategies
        },
    }

    def results(complete: bool) -> dict[str, Any]:
        per_scenario = {}
        for scenario, by_strategy in batches.items():
            summary = {name: summarise(b) for name, b in by_strategy.items() if b}
            r = ratios(summary)
            per_scenario[scenario] = {
                "workflows": scenarios[scenario], "strategies": summary, **r,
                "targets_met": targets(scenario, r),
            }  # fmt: skip
        return {
            "complete": complete,
            "parameters": params,
            "scenarios": per_scenario,
            "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
            "load_avg_1min": [load_before[0], os.getloadavg()[0]],
            "duration_s": round(time.time() - began, 1),
        }

    with ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="qflow-placement-"))
            )
        qpus = {
            name: stack.enter_context(
                emulator(backend, args.time_scale, token, workdir / f"{name}.log")
            )
            for name, backend in QPUS.items()
        }
        for repeat in range(args.repeats):
            for scenario, workflows in scenarios.items():
                # rotate the order so no strategy always runs first or last in a repeat
                shift = repeat % len(strategies)
                for strategy in strategies[shift:] + strategies[:shift]:
                    wait_idle(qpus, token)
                    load = os.getloadavg()[0]
                    t0 = time.monotonic()
                    reports = run_batch(workdir, qpus, strategy, workflows, args, env)
                    stats = {name: qpu_get(url, "stats", token) for name, url in qpus.items()}
                    batch = {"repeat": repeat, "load_1min": load, **measure(reports, stats)}
                    batches[scenario].setdefault(strategy, []).append(batch)
                    out.write_text(json.dumps(results(False), indent=2) + "\n")
                    print(f"  [{time.monotonic() - t0:5.0f} s] {scenario:11} {strategy:15} "
                          f"makespans {batch['makespans_s']} annealing on "
                          f"{batch['annealing_locations']}", flush=True)  # fmt: skip
    final = results(True)
    out.write_text(json.dumps(final, indent=2) + "\n")
    print_table(final)
    load = final["load_avg_1min"]
    print(f"load average (1 min) before/after: {load[0]:.2f} / {load[1]:.2f}; "
          f"took {final['duration_s']:.0f} s")  # fmt: skip
    print(f"written {out}")
    return 0


def print_table(final: dict[str, Any]) -> None:
    head = ("scenario", "strategy", "mean s", "max s", "anneal s", "slow busy", "fast busy")
    print("\n{:11} {:15} {:>7} {:>7} {:>8} {:>9} {:>9}".format(*head), end="")
    print(f" {'fallbk':>6} {'est err':>7}  annealing on")
    for scenario, sc in final["scenarios"].items():
        for name, s in sc["strategies"].items():
            busy = s["qpu_busy_fraction"]
            err = s["median_estimate_error"]
            where = ", ".join(f"{k} {v}" for k, v in sorted(s["annealing_locations"].items()))
            print(f"{scenario:11} {name:15} {s['mean_makespan_s']:7.1f} "
                  f"{s['max_makespan_s']:7.1f} {s['mean_annealing_s']:8.1f} "
                  f"{busy['qpu-slow']:9.2f} {busy['qpu-fast']:9.2f} "
                  f"{s['fallbacks']:3d}/{s['annealing_executions']:<2d} "
                  f"{'-' if err is None else f'{err:.2f}':>7}  {where}")  # fmt: skip
        parts = []
        if "earliest_finish_vs_first" in sc:
            target = f" (target <= {TARGET_VS_FIRST})" if scenario == "contended" else ""
            parts.append(f"earliest-finish/first {sc['earliest_finish_vs_first']:.3f}{target}")
        if "earliest_finish_vs_best_fixed" in sc:
            parts.append(
                f"earliest-finish/best fixed ({sc['best_fixed']}) "
                f"{sc['earliest_finish_vs_best_fixed']:.3f} (target <= {TARGET_VS_BEST_FIXED})"
            )
        missed = [k for k, v in sc["targets_met"].items() if not v]
        verdict = f"; targets MISSED: {', '.join(missed)}" if missed else "; targets met"
        print(f"{scenario:11} " + "; ".join(parts) + (verdict if sc["targets_met"] else ""))
        annealing = [
            f"{label} {sc[key]:.3f}"
            for key, label in (
                ("annealing_earliest_finish_vs_first", "earliest-finish/first"),
                ("annealing_earliest_finish_vs_best_fixed", "earliest-finish/best fixed"),
            )
            if key in sc
        ]
        if annealing:
            print(f"{'':11} annealing step alone: " + "; ".join(annealing))


if __name__ == "__main__":
    sys.exit(main())
