"""Orchestration overhead of qflow against the floors it is compared with.

``local``: a 500-iteration ``cwltool:Loop`` of a trivial CommandLineTool
(benchmarks/cwl/loop.cwl) through ``qflow run`` (embedded local deployment) and through plain
``cwltool``, in pairs: each repeat runs both tools at 1 and at N iterations, interleaved (the
order alternates between repeats), so a pair shares the machine's load of the moment.
Per-iteration cost is the marginal one, (wall(N) - wall(1)) / (N - 1), so process start-up
neither hides nor inflates it; with N = 500 the marginal cost (seconds) dominates start-up
jitter (tens of milliseconds). ``ratio`` is the median over the repeats of each pair's
qflow / cwltool ratio (target <= 1.0); ``*_s_per_iter`` the medians per tool. Start-up is
reported on its own: the median wall of a 1-iteration run per tool, and the median of the
pairs' differences (``startup_excess_s``, target <= 0.15 s); ``cold_startup_excess_s`` the
same for qflow's first run on a machine, before it has kept the loaded CWL schemas. qflow's
modules are byte-compiled first, as pip compiles cwltool's when it installs it (an editable
checkout is not, and these machines set PYTHONDONTWRITEBYTECODE).

``slurm`` (needs root: starts a real cluster with deployments/local-slurm/cluster.sh):
20 sequential ``sleep 1`` steps through qflow on partition ``compute`` against the Slurm
floor measured on the same cluster in the same run: 20 x (``sbatch --parsable``, then
``squeue`` for that job every 0.1 s until it is gone). Overhead per step = (wall - job run
time) / steps; qflow's own start-up (a run with no step at all) is subtracted from its wall.
``slurm_salloc``: the same 20 steps on a location with ``submit: salloc`` (``salloc`` + ``srun``
per step, no scheduler tick), against the same sbatch floor.
``slurm_scatter``: a 200-way scatter of a trivial step through qflow against 200 raw ``sbatch``
submissions (all submitted, then ``squeue`` until none is left); throughput = jobs / second.

Prints a table and writes JSON (default benchmarks/results/overhead.json):
``{"local": {"qflow_s_per_iter", "cwltool_s_per_iter", "ratio", ...},
"slurm": {"qflow_overhead_s_per_step", "floor_overhead_s_per_step", "ratio"},
"slurm_salloc": {the same keys},
"slurm_scatter": {"qflow_jobs_per_s", "sbatch_jobs_per_s", "ratio"}}``.
Run: ``python benchmarks/overhead.py [--iterations 50] [--repeats 5] [--no-slurm]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from qflow.testing.processes import compile_sources
from qflow.testing.slurm_cluster import start_cluster, stop_cluster

HERE = Path(__file__).resolve().parent
LOOP = HERE / "cwl" / "loop.cwl"
SLEEP_LOOP = HERE / "cwl" / "sleep-loop.cwl"
SCATTER = HERE / "cwl" / "scatter.cwl"
NOTHING = HERE / "cwl" / "nothing.cwl"
SLURM_DEPLOYMENT = """\
version: 1
locations:
  compute: {connector: slurm, partition: compute, nodes: 1, slots: 200}
bindings:
  default: compute
"""
SLURM_SALLOC_DEPLOYMENT = SLURM_DEPLOYMENT.replace("slots: 200}", "slots: 200, submit: salloc}")


def wall(cmd: list[str], cwd: str, env: dict[str, str] | None = None) -> float:
    """Wall time of one command; fails loudly if the command fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
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


def measure_local(iterations: int, repeats: int) -> dict[str, Any]:
    """Paired, interleaved repeats; medians of per-pair figures (see the module doc)."""
    per_iter: dict[str, list[float]] = {"cwltool": [], "qflow": []}
    startup: dict[str, list[float]] = {"cwltool": [], "qflow": []}
    ratios: list[float] = []
    startup_excess: list[float] = []
    cold_excess: list[float] = []
    with tempfile.TemporaryDirectory(prefix="qflow-bench-") as workdir:
        for repeat in range(repeats):
            tools = ("cwltool", "qflow") if repeat % 2 == 0 else ("qflow", "cwltool")
            walls: dict[tuple[str, int], float] = {}
            for count in (1, iterations):
                commands = loop_commands(count, workdir)
                for tool in tools:
                    walls[tool, count] = wall(commands[tool], workdir)
            for tool in tools:
                startup[tool].append(walls[tool, 1])
                per_iter[tool].append((walls[tool, iterations] - walls[tool, 1]) / (iterations - 1))
            ratios.append(per_iter["qflow"][-1] / per_iter["cwltool"][-1])
            startup_excess.append(startup["qflow"][-1] - startup["cwltool"][-1])
            # a first run: no CWL schemas kept yet (qflow/engine/schema_cache.py)
            cold_env = {**os.environ, "XDG_CACHE_HOME": f"{workdir}/cold-{repeat}"}
            cold = wall(loop_commands(1, workdir)["qflow"], workdir, cold_env)
            cold_excess.append(cold - startup["cwltool"][-1])
    result: dict[str, Any] = {
        f"{tool}_{what}": statistics.median(values[tool])
        for what, values in (("s_per_iter", per_iter), ("startup_s", startup))
        for tool in ("cwltool", "qflow")
    }
    result["ratio"] = statistics.median(ratios)
    result["ratios"] = ratios  # the pairs, for the reader
    result["startup_excess_s"] = statistics.median(startup_excess)  # of the pairs
    result["startup_excess_pairs_s"] = startup_excess
    result["cold_startup_excess_s"] = statistics.median(cold_excess)
    result["iterations"] = iterations
    result["repeats"] = repeats
    return result


def qflow_wall(workflow: Path, workdir: str, deployment: str | None, *inputs: str) -> float:
    cmd = [sys.executable, "-m", "qflow.cli", "run", "--quiet", "--outdir",
           tempfile.mkdtemp(dir=workdir), str(workflow)]  # fmt: skip
    cmd += [deployment] if deployment else []
    return wall(cmd + ["--", *inputs] if inputs else cmd, workdir)


def slurm_floor(env: dict[str, str], steps: int, seconds: float) -> float:
    """Wall of ``steps`` x (sbatch --parsable; squeue every 0.1 s until the job is gone)."""
    start = time.perf_counter()
    for _ in range(steps):
        job = subprocess.run(
            ["sbatch", "--parsable", "-p", "compute", "-N1", "-o", "/dev/null",
             f"--wrap=sleep {seconds}"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip().split(";")[0]  # fmt: skip
        while subprocess.run(
            ["squeue", "--noheader", "-j", job, "-o", "%i"], env=env, capture_output=True,
            text=True,
        ).stdout.strip():  # fmt: skip
            time.sleep(0.1)
    return time.perf_counter() - start


DAEMON_MESSAGES = frozenset({
    "REQUEST_COMPLETE_BATCH_SCRIPT", "REQUEST_STEP_COMPLETE", "MESSAGE_EPILOG_COMPLETE",
    "REQUEST_COMPLETE_PROLOG", "MESSAGE_NODE_REGISTRATION_STATUS", "REQUEST_STATS_INFO",
})  # fmt: skip
"""RPCs the controller gets for every job whoever submitted it (from slurmd/slurmstepd),
and ``sdiag``'s own: not a client's requests."""


def client_rpcs(env: dict[str, str]) -> int:
    """The controller's count of client requests so far (``sdiag``, by message type)."""
    out = subprocess.run(["sdiag"], env=env, capture_output=True, text=True, check=True).stdout
    section = out.split("by message type", 1)[1].split("by user", 1)[0]
    found = (re.match(r"\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", line)
             for line in section.splitlines())  # fmt: skip
    return sum(int(m[2]) for m in found if m and m[1] not in DAEMON_MESSAGES)


class Counted:
    """Client RPCs and this process's children's CPU seconds over a block of work."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.rpcs = 0
        self.cpu_s = 0.0

    def __enter__(self) -> Counted:
        self._rpcs = client_rpcs(self.env)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._cpu = usage.ru_utime + usage.ru_stime
        return self

    def __exit__(self, *exc: object) -> None:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_s = usage.ru_utime + usage.ru_stime - self._cpu
        self.rpcs = client_rpcs(self.env) - self._rpcs


def concurrent(commands: list[list[str]], cwd: str) -> None:
    """Run commands at the same time; fail loudly if one fails."""
    procs = [subprocess.Popen(c, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in commands]  # fmt: skip
    for proc, cmd in zip(procs, commands, strict=True):
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")


def sbatch_throughput(env: dict[str, str], jobs: int) -> float:
    """Jobs per second of ``jobs`` raw submissions of a trivial job, until all are done."""
    start = time.perf_counter()
    ids = [
        subprocess.run(
            ["sbatch", "--parsable", "-p", "compute", "-o", "/dev/null", "--wrap=true"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip().split(";")[0]
        for _ in range(jobs)
    ]  # fmt: skip
    while subprocess.run(
        ["squeue", "--noheader", "-o", "%i", "-j", ",".join(ids)], env=env,
        capture_output=True, text=True,
    ).stdout.strip():  # fmt: skip
        time.sleep(0.05)
    return jobs / (time.perf_counter() - start)


def measure_controller_load(
    env: dict[str, str], workdir: str, deployment: Path, runs: int, steps: int
) -> dict[str, float]:
    """Client RPCs and submit-host CPU per step, qflow against the floor, with ``runs`` runs
    of ``steps`` sequential ``sleep 1`` steps at the same time."""
    inputs = ["--count", str(steps), "--seconds", "1"]
    command = [sys.executable, "-m", "qflow.cli", "run", "--quiet", str(SLEEP_LOOP),
               str(deployment), "--", *inputs]  # fmt: skip
    with Counted(env) as qflow:
        concurrent([[*command[:5], "--outdir", tempfile.mkdtemp(dir=workdir), *command[5:]]
                    for _ in range(runs)], workdir)  # fmt: skip
    with Counted(env) as floor:
        threads = [threading.Thread(target=slurm_floor, args=(env, steps, 1.0))
                   for _ in range(runs)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    total = runs * steps
    return {
        "runs": runs,
        "steps_per_run": steps,
        "qflow_rpcs_per_step": qflow.rpcs / total,
        "floor_rpcs_per_step": floor.rpcs / total,
        "qflow_cpu_s_per_step": qflow.cpu_s / total,
        "floor_cpu_s_per_step": floor.cpu_s / total,
    }


def measure_slurm(steps: int, width: int, repeats: int) -> dict[str, dict[str, float]]:
    seconds = 1.0
    with tempfile.TemporaryDirectory(prefix="qflow-bench-slurm-") as workdir:
        cluster = start_cluster(Path(workdir) / "cluster")
        os.environ["SLURM_CONF"] = str(cluster.conf)
        deployment = Path(workdir) / "slurm.yml"
        deployment.write_text(SLURM_DEPLOYMENT)
        salloc_deployment = Path(workdir) / "slurm-salloc.yml"
        salloc_deployment.write_text(SLURM_SALLOC_DEPLOYMENT)
        sequence = ["--count", str(steps), "--seconds", str(seconds)]
        try:
            startup = min(qflow_wall(NOTHING, workdir, None) for _ in range(repeats))
            qflow_seq, salloc_seq, floor_seq, qflow_rate, raw_rate = [], [], [], [], []
            rpcs: dict[str, list[float]] = {"qflow": [], "floor": []}
            for _ in range(repeats):
                for target, dep in ((qflow_seq, deployment), (salloc_seq, salloc_deployment)):
                    with Counted(cluster.env) as counted:
                        run = qflow_wall(SLEEP_LOOP, workdir, str(dep), *sequence)
                    target.append((run - startup - steps * seconds) / steps)
                    if dep == deployment:
                        rpcs["qflow"].append(counted.rpcs / steps)
                with Counted(cluster.env) as counted:
                    floor_wall = slurm_floor(cluster.env, steps, seconds)
                floor_seq.append((floor_wall - steps * seconds) / steps)
                rpcs["floor"].append(counted.rpcs / steps)
                scatter = qflow_wall(SCATTER, workdir, str(deployment), "--width", str(width))
                qflow_rate.append(width / (scatter - startup))
                raw_rate.append(sbatch_throughput(cluster.env, width))
            load = measure_controller_load(cluster.env, workdir, deployment, 20, 3)
        finally:
            stop_cluster(Path(workdir) / "cluster")
    return {
        "slurm": {
            "qflow_overhead_s_per_step": min(qflow_seq),
            "floor_overhead_s_per_step": min(floor_seq),
            "ratio": min(qflow_seq) / min(floor_seq),
            "steps": steps,
            "qflow_startup_s": startup,
            "qflow_rpcs_per_step": statistics.median(rpcs["qflow"]),
            "floor_rpcs_per_step": statistics.median(rpcs["floor"]),
        },
        "slurm_concurrent": load,
        "slurm_salloc": {
            "qflow_overhead_s_per_step": min(salloc_seq),
            "floor_overhead_s_per_step": min(floor_seq),
            "ratio": min(salloc_seq) / min(floor_seq),
            "steps": steps,
        },
        "slurm_scatter": {
            "qflow_jobs_per_s": max(qflow_rate),
            "sbatch_jobs_per_s": max(raw_rate),
            "ratio": max(qflow_rate) / max(raw_rate),
            "width": width,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=str(HERE / "results" / "overhead.json"))
    parser.add_argument("--no-slurm", action="store_true", help="skip the Slurm scenarios")
    parser.add_argument("--slurm-steps", type=int, default=20)
    parser.add_argument("--scatter-width", type=int, default=200)
    args = parser.parse_args(argv)

    compile_sources()
    load_before = os.getloadavg()[0]
    local = measure_local(args.iterations, args.repeats)
    results: dict = {"local": local}
    if not args.no_slurm:
        results.update(measure_slurm(args.slurm_steps, args.scatter_width, min(args.repeats, 3)))
    results["load_avg_1min"] = [load_before, os.getloadavg()[0]]

    print(f"{'scenario':<10} {'qflow s/iter':>13} {'floor s/iter':>13} {'ratio':>7}  floor")
    print(
        f"{'local':<10} {local['qflow_s_per_iter']:>13.4f} {local['cwltool_s_per_iter']:>13.4f}"
        f" {local['ratio']:>7.2f}  cwltool, {args.iterations}-iteration loop (median of "
        f"{args.repeats} paired ratios)"
    )
    print(
        f"{'startup':<10} {local['qflow_startup_s']:>13.3f} {local['cwltool_startup_s']:>13.3f}"
        f" {local['startup_excess_s']:>+7.3f}  cwltool, 1-iteration run (s; excess: median pair)"
    )
    print(
        f"{'cold':<10} {'':>13} {'':>13} {local['cold_startup_excess_s']:>+7.3f}  the same, "
        "qflow's first run (no CWL schemas kept yet)"
    )
    if "slurm" in results:
        sl, sa, sc = results["slurm"], results["slurm_salloc"], results["slurm_scatter"]
        print(
            f"{'slurm':<10} {sl['qflow_overhead_s_per_step']:>13.4f} "
            f"{sl['floor_overhead_s_per_step']:>13.4f} {sl['ratio']:>7.2f}  sbatch + squeue every "
            f"0.1 s, {sl['steps']} sequential sleep 1 (overhead s/step)"
        )
        print(
            f"{'salloc':<10} {sa['qflow_overhead_s_per_step']:>13.4f} "
            f"{sa['floor_overhead_s_per_step']:>13.4f} {sa['ratio']:>7.2f}  the same, qflow "
            "with submit: salloc (floor: sbatch)"
        )
        print(
            f"{'scatter':<10} {sc['qflow_jobs_per_s']:>13.1f} {sc['sbatch_jobs_per_s']:>13.1f} "
            f"{sc['ratio']:>7.2f}  {sc['width']} raw sbatch (jobs/s; ratio = qflow / raw)"
        )
        cc = results["slurm_concurrent"]
        print(
            f"{'rpc/step':<10} {sl['qflow_rpcs_per_step']:>13.2f} "
            f"{sl['floor_rpcs_per_step']:>13.2f} {'':>7}  controller client RPCs per step "
            f"(sdiag), 1 run of {sl['steps']} steps"
        )
        print(
            f"{'rpc/step':<10} {cc['qflow_rpcs_per_step']:>13.2f} "
            f"{cc['floor_rpcs_per_step']:>13.2f} {'':>7}  the same, {cc['runs']} concurrent runs "
            f"of {cc['steps_per_run']} steps"
        )
        print(
            f"{'cpu/step':<10} {cc['qflow_cpu_s_per_step']:>13.3f} "
            f"{cc['floor_cpu_s_per_step']:>13.3f} {'':>7}  submit-host CPU seconds per step, "
            f"{cc['runs']} concurrent runs (qflow: start-up included)"
        )
    print(f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
