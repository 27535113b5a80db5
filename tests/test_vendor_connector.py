"""A vendor's quantum connector from its own package: installed with pip, found through the
``qflow.connectors`` entry point, used by a workflow; plus the fallback rules it exercises."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DATA, REPO, deployment_from, run_in_process
from qflow.registry import registry

EXAMPLE = REPO / "docs" / "examples" / "qflow-exact-qpu"
QUBO = DATA / "mis5.qubo.json"
OPTIMUM = [0, 2, 4]  # max-weight independent set of the 5-cluster chain in mis5.qubo.json


@pytest.fixture(scope="module")
def exact_qpu_installed() -> Iterator[None]:
    """pip-install the example package for this module's tests, uninstall it afterwards."""
    pip = [sys.executable, "-m", "pip"]
    proc = subprocess.run([*pip, "install", "-q", "--no-deps", str(EXAMPLE)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot pip-install the example package: {proc.stderr.decode()[-500:]}")
    registry.cache_clear()
    yield
    subprocess.run([*pip, "uninstall", "-q", "-y", "qflow-exact-qpu"], capture_output=True)
    registry.cache_clear()


def _deployment(vqpus: int = 1, max_wait: float = 5, shot_time: float = 0.0, max_vars: int = 16):
    return deployment_from(
        f"""
        version: 1
        locations:
          local: {{connector: local, slots: 3}}
          exact:
            connector: exact-qpu
            vqpus: {vqpus}
            max_wait: {max_wait}
            shot_time: {shot_time}
            max_variables: {max_vars}
        bindings:
          default: local
          /solve: [exact, local]
        """
    )


def test_vendor_connector_is_listed(exact_qpu_installed):
    proc = subprocess.run(
        [sys.executable, "-m", "qflow.cli", "connectors"], capture_output=True, text=True
    )
    assert "exact-qpu (quantum, qflow_exact_qpu.ExactQpu)" in proc.stdout
    assert "max_variables = 16" in proc.stdout


def test_quantum_candidate_runs_its_quantum_implementation(tmp_path: Path, exact_qpu_installed):
    result, outputs = run_in_process(
        DATA / "qubo-solve.cwl", _deployment(shot_time=0.1), tmp_path, "--qubo", str(QUBO)
    )
    assert result.exit_code == 0
    solution = json.loads(Path(outputs["solution"]["path"]).read_text())
    assert solution["solver"] == "exact-qpu" and solution["selected"] == OPTIMUM
    (record,) = result.report["steps"]
    assert record["quantum"] and record["location"] == "exact"
    assert record["connector"] == "exact-qpu" and not record["fallback"]
    assert record["nodes"] == 0 and record["node_seconds"] == 0
    assert record["qpu_seconds"] >= 0.1


def test_no_slot_within_max_wait_falls_back(tmp_path: Path, exact_qpu_installed):
    # one virtual QPU, three solves at once, each holding it for a while: the others give up
    result, outputs = run_in_process(
        DATA / "qubo-scatter.cwl",
        _deployment(vqpus=1, max_wait=0.3, shot_time=1.5),
        tmp_path,
        "--qubo",
        str(QUBO),
    )
    assert result.exit_code == 0
    records = result.report["steps"]
    on_qpu = [r for r in records if r["quantum"]]
    fallbacks = [r for r in records if r["fallback"]]
    assert len(on_qpu) == 1 and len(fallbacks) == 2
    for r in fallbacks:
        assert r["location"] == "local" and "within 0.3 s" in r["fallback_reason"]
    assert result.report["totals"]["fallbacks"] == 2
    for f in outputs["solutions"]:  # both implementations agree on the optimum
        assert json.loads(Path(f["path"]).read_text())["selected"] == OPTIMUM


def test_a_failed_quantum_task_falls_back(tmp_path: Path, exact_qpu_installed):
    # the QPU refuses QUBOs bigger than 3 variables: the task fails, SA takes over
    result, outputs = run_in_process(
        DATA / "qubo-solve.cwl", _deployment(max_vars=3), tmp_path, "--qubo", str(QUBO)
    )
    assert result.exit_code == 0
    quantum, classical = result.report["steps"]
    assert quantum["quantum"] and quantum["status"] == "failed"
    assert classical["fallback"] and classical["location"] == "local"
    assert "quantum execution on exact failed" in classical["fallback_reason"]
    solution = json.loads(Path(outputs["solution"]["path"]).read_text())
    assert solution["solver"] != "exact-qpu" and solution["selected"] == OPTIMUM


def test_quantum_candidate_through_ibm_local_mode(tmp_path: Path):
    """The QUBO step as QAOA on qiskit-ibm-runtime's fake backend, through the gateway."""
    pytest.importorskip(
        "qiskit_ibm_runtime", reason="needs the ibm extra: pip install 'qflow[ibm]'"
    )
    deployment = deployment_from(
        """
        version: 1
        locations:
          local: {connector: local}
          ibm-qpu: {connector: ibm, mode: local, backend: fake_nairobi, shots: 1024, max_wait: 60}
        bindings:
          default: local
          /solve: [ibm-qpu, local]
        """
    )
    result, outputs = run_in_process(
        DATA / "qubo-solve.cwl", deployment, tmp_path, "--qubo", str(QUBO)
    )
    assert result.exit_code == 0
    (record,) = result.report["steps"]
    assert record["quantum"] and record["connector"] == "ibm" and not record["fallback"]
    assert record["qpu_seconds"] > 0
    solution = json.loads(Path(outputs["solution"]["path"]).read_text())
    assert solution["solver"].startswith("ibm:fake_nairobi")
    # QAOA on a noisy fake backend samples: a non-empty independent set, its energy right
    # (the exact optimum is not guaranteed, unlike SA or the exact QPU)
    qubo = json.loads(QUBO.read_text())
    chosen = set(solution["selected"])
    assert chosen and solution["feasible"]
    assert not any(i in chosen and j in chosen for i, j in qubo["edges"])
    energy = sum(v for i, j, v in qubo["terms"] if i in chosen and j in chosen)
    assert solution["energy"] == pytest.approx(energy)
