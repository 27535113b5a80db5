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
it starts (emulator, gateway, runs and their steps) is stopped before it returns. The load
itself is :mod:`qflow.testing.gateway_load`, which tests/test_load.py runs small.
Run: ``python benchmarks/gateway_load.py [--runs 20] [--time-scale 1] [--vqpus 2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from qflow.testing.gateway_load import problems, run_load, summarize

HERE = Path(__file__).resolve().parent


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
