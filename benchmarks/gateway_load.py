"""Many ``qflow run`` processes sharing one site-wide QPU gateway and one emulated QPU.

Starts ``qflow emulator`` (superconducting backend, ``--time-scale``: 0.2 s x scale of latency
per task), ``qflow gateway site.yml`` (the emulator as a ``rest`` location with ``vqpus: 2``)
and then ``--runs`` ``qflow run`` processes at once, each running tests/data/qubo-scatter.cwl
(three quantum-candidate QUBO solves of tests/data/mis5.qubo.json) on a deployment whose
quantum location is ``connector: shared-qpu`` pointing at the gateway.

Checked (any failure is printed and makes the exit status 1): no run failed, no step fell
back, every QPU task completed exactly once (the emulator's /v1/stats: unique ids, all
completed, as many as quantum step records), never more than ``vqpus`` leases at once (both
from the reports' quantum-record intervals and from the gateway's own count).

Measured: the gateway's request latency, timed inside the gateway for every request it
handles (``GET /v1/stats`` on the gateway, admin token): p50/p99 of the step-facing requests
it forwards to the QPU (submit, state, result), and apart from them the lease requests, whose
time includes waiting for a free virtual QPU. QPU occupancy = busy time / (last end - first
start) from the emulator's /v1/stats. Load average before and after.

Prints a table and writes JSON (default benchmarks/results/gateway_load.json). Every process
it starts (emulator, gateway, runs and their steps) is stopped before it returns.
Run: ``python benchmarks/gateway_load.py [--runs 20] [--time-scale 1] [--vqpus 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKFLOW = REPO / "tests" / "data" / "qubo-scatter.cwl"
QUBO = REPO / "tests" / "data" / "mis5.qubo.json"
STEP = "/solve"


class Processes:
    """Every process the benchmark started, each in its own process group, stopped by id."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, start_new_session=True, text=True, **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM to each group we started (a run and the step commands it started), then
        SIGKILL to what is left after 15 s."""
        for proc in self.started:
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.started:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
            self._signal(proc, signal.SIGKILL)  # a step command left in the group, if any

    @staticmethod
    def _signal(proc: subprocess.Popen[str], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the group's id is the pid we started


def _serve(procs: Processes, cmd: list[str], env: dict[str, str], log: Path) -> str:
    """Start a service; the URL from its first stdout line."""
    proc = procs.start(
        [sys.executable, "-m", *cmd],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        env={**os.environ, **env},
        cwd=REPO,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if " listening on " not in line:
        raise RuntimeError(f"{cmd[0]} did not start: {line!r}; see {log}")
    return line.strip().rsplit(" ", 1)[-1]


def _get(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def run_load(
    runs: int,
    workdir: Path,
    *,
    time_scale: float = 1.0,
    vqpus: int = 2,
    workflow: Path = WORKFLOW,
    steps_per_run: int = 3,
    timeout: float = 900,
) -> dict[str, Any]:
    """Run the load once; everything measured, raw (see :func:`summarize`, :func:`problems`).

    ``workflow`` has ``steps_per_run`` quantum-candidate executions of step /solve.
    """
    procs = Processes()
    qpu_token, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {"QFLOW_BENCH_QPU_TOKEN": qpu_token, "QFLOW_BENCH_GATEWAY_ADMIN": admin}
    try:
        qpu_url = _serve(
            procs,
            ["qflow.cli", "emulator", "--backend", "superconducting",
             "--time-scale", str(time_scale)],
            {"QFLOW_EMULATOR_TOKEN": qpu_token},
            workdir / "emulator.log",
        )  # fmt: skip
        site = workdir / "site.yml"
        site.write_text(
            textwrap.dedent(
                f"""
                version: 1
                locations:
                  qpu:
                    connector: rest
                    url: {qpu_url}
                    token: ${{env:QFLOW_BENCH_QPU_TOKEN}}
                    vqpus: {vqpus}
                """
            )
        )
        gateway_url = _serve(
            procs,
            ["qflow.cli", "gateway", str(site), "--admin-token",
             "${env:QFLOW_BENCH_GATEWAY_ADMIN}"],
            env,
            workdir / "gateway.log",
        )  # fmt: skip
        user = workdir / "user.yml"
        user.write_text(
            textwrap.dedent(
                f"""
                version: 1
                locations:
                  local: {{connector: local, slots: 2}}
                  qpu:
                    connector: shared-qpu
                    gateway: {gateway_url}
                    gateway_token: ${{env:QFLOW_BENCH_GATEWAY_ADMIN}}
                    max_wait: {timeout}
                bindings:
                  default: local
                  {STEP}: [qpu, local]
                """
            )
        )
        load_before = os.getloadavg()
        begin = time.monotonic()
        started = []
        for i in range(runs):
            outdir = workdir / f"run{i}"
            outdir.mkdir()
            cmd = [sys.executable, "-m", "qflow.cli", "run", "--quiet", "--outdir",
                   str(outdir), str(workflow), str(user), "--", "--qubo", str(QUBO)]  # fmt: skip
            with (outdir / "stdout").open("w") as out, (outdir / "stderr").open("w") as err:
                started.append(
                    procs.start(cmd, stdout=out, stderr=err, cwd=REPO, env={**os.environ, **env})
                )
        exit_codes = []
        for proc in started:
            left = max(1.0, timeout - (time.monotonic() - begin))
            try:
                exit_codes.append(proc.wait(left))
            except subprocess.TimeoutExpired:
                exit_codes.append(None)
        wall = time.monotonic() - begin
        load_after = os.getloadavg()
        qpu = _get(f"{qpu_url}/v1/stats", qpu_token)
        gateway = _get(f"{gateway_url}/v1/stats", admin)
    finally:
        procs.stop_all()
    records, stderr_tails = [], {}
    for i, code in enumerate(exit_codes):
        report = workdir / f"run{i}" / "qflow-report.json"
        if report.exists():
            records += [
                {**r, "run": i}
                for r in json.loads(report.read_text())["steps"]
                if r["step"] == STEP
            ]
        if code != 0:
            stderr_tails[i] = (workdir / f"run{i}" / "stderr").read_text()[-2000:]
    return {
        "runs": runs,
        "expected_steps": runs * steps_per_run,
        "vqpus": vqpus,
        "time_scale": time_scale,
        "exit_codes": exit_codes,
        "stderr_tails": stderr_tails,
        "records": records,
        "qpu": qpu,
        "gateway": gateway,
        "wall_s": wall,
        "load_avg": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in load_after],
        },
    }


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at the same time (an end at t closes before a start at t)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    level = best = 0
    for _, delta in events:
        level += delta
        best = max(best, level)
    return best


def problems(result: dict[str, Any]) -> list[str]:
    """What went wrong (empty: everything the benchmark checks held)."""
    found = []
    failed = {i: c for i, c in enumerate(result["exit_codes"]) if c != 0}
    if failed:
        found.append(f"runs failed (exit status): {failed}")
    records = result["records"]
    expected = result["expected_steps"]
    if len(records) != expected:
        found.append(f"{len(records)} step records for {STEP}, expected {expected}")
    off_qpu = [r for r in records if not r["quantum"] or r["fallback"] or r["status"] != "success"]
    if off_qpu:
        found.append(f"{len(off_qpu)} steps not done on the QPU, e.g. {off_qpu[0]}")
    tasks = result["qpu"]["tasks"]
    if len({t["id"] for t in tasks}) != len(tasks):
        found.append("the QPU executed a task id twice")
    if any(t["state"] != "completed" for t in tasks):
        found.append(f"QPU tasks not completed: {[t['state'] for t in tasks]}")
    if len(tasks) != len(records):
        found.append(f"{len(tasks)} QPU tasks for {len(records)} quantum step records")
    ordered = sorted((t["started"], t["ended"]) for t in tasks)
    if any(a[1] > b[0] for a, b in zip(ordered, ordered[1:], strict=False)):
        found.append("the QPU ran two tasks at once")
    overlap = max_overlap([(r["started"], r["ended"]) for r in records if r["started"]])
    if overlap > result["vqpus"]:
        found.append(f"{overlap} steps held the QPU at once (vqpus {result['vqpus']})")
    held = result["gateway"]["locations"]["qpu"]
    if held["most_held"] > result["vqpus"] or held["held"] != 0 or held["refused"]:
        found.append(f"gateway leases: {held}")
    return found


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the benchmark reports."""
    qpu, gateway = result["qpu"], result["gateway"]
    span = (qpu["last_end"] - qpu["first_start"]) if qpu["tasks"] else 0.0
    records = result["records"]
    leases = gateway["requests"].get("POST /v1/leases", {})
    step = gateway["step_requests"]
    return {
        "runs": result["runs"],
        "vqpus": result["vqpus"],
        "time_scale": result["time_scale"],
        "quantum_steps": len(records),
        "qpu_tasks": len(qpu["tasks"]),
        "failed_runs": sum(1 for c in result["exit_codes"] if c != 0),
        "fallbacks": sum(1 for r in records if r["fallback"]),
        "wall_s": round(result["wall_s"], 2),
        "gateway_step_requests": step["count"],
        "gateway_p50_ms": step["p50_ms"],
        "gateway_p90_ms": step["p90_ms"],
        "gateway_p99_ms": step["p99_ms"],
        "gateway_max_ms": step["max_ms"],
        "lease_requests": leases.get("count", 0),
        "lease_wait_p50_ms": leases.get("p50_ms"),
        "lease_wait_p99_ms": leases.get("p99_ms"),
        "gateway_per_route": gateway["requests"],
        "most_leases_at_once": gateway["locations"]["qpu"]["most_held"],
        "most_steps_on_qpu_at_once": max_overlap(
            [(r["started"], r["ended"]) for r in records if r["started"]]
        ),
        "qpu_busy_s": round(qpu["busy_seconds"], 3),
        "qpu_span_s": round(span, 3),
        "qpu_occupancy": round(qpu["busy_seconds"] / span, 3) if span > 0 else None,
        "load_avg_before": result["load_avg"]["before"],
        "load_avg_after": result["load_avg"]["after"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="qflow run processes at once")
    parser.add_argument("--time-scale", type=float, default=1.0, help="emulator latency factor")
    parser.add_argument("--vqpus", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "results" / "gateway_load.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qflow-gateway-load-") as tmp:
        result = run_load(args.runs, Path(tmp), time_scale=args.time_scale, vqpus=args.vqpus)
    summary = summarize(result)
    found = problems(result)
    rows = [
        ("qflow runs at once", f"{summary['runs']}"),
        ("quantum steps / QPU tasks", f"{summary['quantum_steps']} / {summary['qpu_tasks']}"),
        ("failed runs / fallbacks", f"{summary['failed_runs']} / {summary['fallbacks']}"),
        ("wall (s)", f"{summary['wall_s']:.1f}"),
        ("gateway step requests", f"{summary['gateway_step_requests']}"),
        ("gateway p50 / p99 (ms)", f"{summary['gateway_p50_ms']} / {summary['gateway_p99_ms']}"),
        ("lease wait p50 / p99 (ms)",
         f"{summary['lease_wait_p50_ms']} / {summary['lease_wait_p99_ms']}"),
        ("most leases at once", f"{summary['most_leases_at_once']} (vqpus {summary['vqpus']})"),
        ("QPU busy / span (s)", f"{summary['qpu_busy_s']:.2f} / {summary['qpu_span_s']:.2f}"),
        ("QPU occupancy", f"{summary['qpu_occupancy']}"),
        ("load avg before", " ".join(f"{x:.2f}" for x in summary["load_avg_before"])),
        ("load avg after", " ".join(f"{x:.2f}" for x in summary["load_avg_after"])),
    ]  # fmt: skip
    print(f"gateway load: {args.runs} qflow runs, one gateway, one emulated QPU (superconducting)")
    for name, value in rows:
        print(f"  {name:<28} {value:>18}")
    for problem in found:
        print(f"PROBLEM: {problem}")
    for i, tail in result["stderr_tails"].items():
        print(f"--- run {i} stderr (end) ---\n{tail}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"gateway_load": summary, "problems": found}, indent=2) + "\n")
    print(f"written to {output}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
