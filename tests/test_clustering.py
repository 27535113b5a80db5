"""The reference use case end to end through `qflow run` on the embedded local deployment."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from rocrate.rocrate import ROCrate

from conftest import REPO, qflow_cli

CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"
LOOP_STEPS = ("kmeans", "dbscan", "hierarchical", "qubo", "annealing", "silhouette")


def test_clustering_aggregation_loops_until_the_silhouette_threshold(tmp_path: Path):
    # at 1500 points, seed 0 needs three iterations before a consensus beats 0.8
    proc = qflow_cli(
        "run", str(CLUSTERING), str(REPO / "deployments" / "local.yml"),
        "--outdir", str(tmp_path), "--provenance", str(tmp_path / "crate"),
        "--", "--seed", "0", "--n_samples", "1500",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    iterations = out["iterations"]
    assert 1 < iterations <= 10
    assert out["score"] > 0.8 or iterations == 10

    labels = np.load(out["labels"]["path"])
    assert labels.shape == (1500,) and len(set(labels.tolist())) >= 2

    report = json.loads((tmp_path / "qflow-report.json").read_text())
    assert report["status"] == "success"
    steps = Counter((r["step"], r["iteration"]) for r in report["steps"])
    expected = {("/generate", None): 1}
    expected.update({(f"/loop/{s}", i): 1 for s in LOOP_STEPS for i in range(iterations)})
    assert steps == expected
    assert report["totals"]["steps"] == 1 + len(LOOP_STEPS) * iterations
    assert all(r["status"] == "success" for r in report["steps"])
    # local.yml sends the quantum candidate to the embedded QPU emulator, the rest stay here
    for r in report["steps"]:
        on_qpu = r["step"] == "/loop/annealing"
        assert r["location"] == ("qpu" if on_qpu else "local")
        assert r["quantum"] == on_qpu and not r["fallback"]
        assert (r["qpu_seconds"] > 0) == on_qpu
        assert r["nodes"] == 0 and r["node_seconds"] == 0
    assert report["totals"]["qpu_seconds"] > 0
    _check_annealing_in_the_crate(tmp_path / "crate", iterations)


def _check_annealing_in_the_crate(crate_dir: Path, iterations: int) -> None:
    """The provenance crate says where, and on which QPU, /loop/annealing ran each time."""
    crate = ROCrate(crate_dir)
    actions = [e for e in crate.get_entities() if e.type == "CreateAction"]
    annealing = [a for a in actions if a.get("stepPath") == "/loop/annealing"]
    assert sorted(a["iteration"] for a in annealing) == list(range(iterations))
    for action in annealing:
        location = action["location"]
        assert location["name"] == "qpu" and location["connector"] == "emulator"
        assert location["qpuBackend"] == "superconducting"  # deployments/local.yml's QPU
        assert action["quantum"] is True and action["qpuSeconds"] > 0
        assert action["instrument"].id == "workflow/solve-qpu.cwl"  # the quantum implementation
        assert (crate_dir / action["instrument"].id).is_file()


def test_clustering_on_hyperqueue_with_the_qpu_client_as_a_task(tmp_path: Path, hq_server):
    deployment = tmp_path / "hq.yml"
    deployment.write_text(
        f"""
version: 1
locations:
  hq: {{connector: hyperqueue, server_dir: {hq_server.server_dir}, slots: 2}}
  qpu: {{connector: emulator, run_on: hq, max_wait: 60}}
bindings:
  default: hq
  /loop/annealing: [qpu, hq]
"""
    )
    proc = qflow_cli(
        "run", str(CLUSTERING), str(deployment), "--quiet", "--outdir", str(tmp_path / "out"),
        "--", "--n_samples", "1000", "--max_iterations", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["iterations"] == 1
    report = json.loads((tmp_path / "out" / "qflow-report.json").read_text())
    assert len(report["steps"]) == 1 + len(LOOP_STEPS)
    for r in report["steps"]:
        assert r["status"] == "success" and r["external_id"]  # the HyperQueue job id
        if r["step"] == "/loop/annealing":
            assert r["location"] == "qpu" and r["quantum"] and r["qpu_seconds"] > 0
        else:
            assert r["location"] == "hq" and r["connector"] == "hyperqueue"
