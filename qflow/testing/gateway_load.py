"""Many ``qflow run`` processes sharing one site-wide QPU gateway and one emulated QPU.

The load of benchmarks/gateway_load.py (its docstring says what is checked and measured) and
of tests/test_load.py (a small version): :func:`run_load` starts ``qflow emulator``
(superconducting backend), ``qflow gateway`` (the emulator as a ``rest`` location with
``vqpus``) and ``runs`` ``qflow run`` processes at once, each running tests/data/
qubo-scatter.cwl on a deployment whose quantum location is ``connector: shared-qpu`` pointing
at the gateway, and returns everything measured, raw; :func:`problems` lists what went wrong,
:func:`summarize` computes the figures. Every process started (emulator, gateway, runs and
their steps, each in a process group of its own) is stopped by group id before it returns.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

from qflow.testing.processes import REPO, ProcessGroups
from qflow.testing.qpu_services import gateway_user_deployment

WORKFLOW = REPO / "tests" / "data" / "qubo-scatter.cwl"
QUBO = REPO / "tests" / "data" / "mis5.qubo.json"
STEP = "/solve"


def _serve(procs: ProcessGroups, cmd: list[str], env: dict[str, str], log: Path) -> str:
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
    procs = ProcessGroups()
    qpu_token, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {"QFLOW_BENCH_QPU_TOKEN": qpu_token, "QFLOW_GATEWAY_ADMIN": admin}
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
             "${env:QFLOW_GATEWAY_ADMIN}"],
            env,
            workdir / "gateway.log",
        )  # fmt: skip
        user = workdir / "user.yml"
        user.write_text(gateway_user_deployment(gateway_url, f"{STEP}: [qpu, local]", timeout))
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
        exit_codes: list[int | None] = []
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
