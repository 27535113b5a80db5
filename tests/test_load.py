"""Load: five ``qflow run`` processes share one site-wide gateway and one emulated QPU.

The small version of benchmarks/gateway_load.py (the same load: qflow.testing.gateway_load):
real processes only, the emulator (superconducting, 0.1 s of latency per task), ``qflow
gateway`` with ``vqpus: 2`` and five runs of tests/data/qubo-scatter.cwl (three
quantum-candidate solves each) at once.
"""

from __future__ import annotations

from pathlib import Path

from qflow.testing import gateway_load

RUNS, VQPUS = 5, 2


def test_five_runs_share_one_gateway_and_one_qpu(tmp_path: Path):
    result = gateway_load.run_load(RUNS, tmp_path, time_scale=0.5, vqpus=VQPUS, timeout=120)
    assert result["exit_codes"] == [0] * RUNS, result["stderr_tails"]
    records = result["records"]
    assert len(records) == RUNS * 3
    assert all(r["quantum"] and not r["fallback"] and r["status"] == "success" for r in records)
    # every QPU task completed exactly once: one per quantum step, none repeated
    tasks = result["qpu"]["tasks"]
    assert len(tasks) == len(records) and len({t["id"] for t in tasks}) == len(tasks)
    assert all(t["state"] == "completed" for t in tasks)
    # never more than vqpus steps on the QPU; the gateway counted the same, and did reach it
    intervals = [(r["started"], r["ended"]) for r in records]
    assert 1 <= gateway_load.max_overlap(intervals) <= VQPUS
    leases = result["gateway"]["locations"]["qpu"]
    assert leases["most_held"] == VQPUS and leases["held"] == 0
    assert leases["granted"] == len(records) and leases["refused"] == 0
    assert gateway_load.problems(result) == []
    summary = gateway_load.summarize(result)
    assert summary["gateway_step_requests"] >= 3 * len(records)  # submit, state..., result
    assert 0 < summary["gateway_p50_ms"] <= summary["gateway_p99_ms"]
    assert 0 < summary["qpu_occupancy"] <= 1
    print(
        f"{RUNS} runs: gateway p50 {summary['gateway_p50_ms']} ms, "
        f"p99 {summary['gateway_p99_ms']} ms, QPU occupancy {summary['qpu_occupancy']}"
    )
