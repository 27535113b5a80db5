"""Allocation strategies on a real Slurm cluster: what each one holds, and when."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, qflow_cli

pytestmark = pytest.mark.slurm

CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"
INPUTS = ["--", "--n_samples", "600", "--max_iterations", "2", "--threshold", "0.99"]


def _run(strategy: str, slurm_cluster: Any, tmp_path: Path) -> dict:
    deployment = tmp_path / f"{strategy}.yml"
    deployment.write_text(
        f"""
version: 1
locations:
  compute: {{connector: slurm, partition: compute, slots: 3, held_nodes: 3}}
  qpu: {{connector: emulator, backend: neutral-atom, time_scale: 0.02, max_wait: 60}}
bindings:
  default: compute
  /loop/annealing: [qpu, compute]
policy:
  allocation: {strategy}
"""
    )
    outdir = tmp_path / strategy
    proc = qflow_cli("run", str(CLUSTERING), str(deployment), "--quiet", "--outdir",
                     str(outdir), *INPUTS, env=slurm_cluster.env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert slurm_cluster.active_jobs() == [], "an allocation outlived the run"
    return json.loads((outdir / "qflow-report.json").read_text())


def _classical_steps_inside(report: dict) -> None:
    ids = {a["external_id"] for a in report["allocations"]}
    for step in report["steps"]:
        if step["location"] == "compute":  # srun inside an allocation: job@node, no own node-s
            job, node = step["external_id"].split("@")
            assert job in ids and node.startswith("c") and step["node_seconds"] == 0
    total = sum(a["node_seconds"] for a in report["allocations"])
    assert report["totals"]["node_seconds"] == pytest.approx(total)


def test_held_keeps_all_nodes_for_the_whole_run(slurm_cluster: Any, tmp_path: Path):
    report = _run("held", slurm_cluster, tmp_path)
    (held,) = report["allocations"]
    assert held["kind"] == "held" and held["nodes"] == 3
    first = min(s["started"] for s in report["steps"])
    last = max(s["ended"] for s in report["steps"])
    assert held["started"] <= first + 1 and held["ended"] >= last - 1  # Slurm: whole seconds
    _classical_steps_inside(report)


@pytest.mark.parametrize("strategy", ["malleable", "auto"])
def test_malleable_and_auto_shrink_during_quantum_phases(
    slurm_cluster: Any, tmp_path: Path, strategy: str
):
    report = _run(strategy, slurm_cluster, tmp_path)
    anchors = [a for a in report["allocations"] if a["kind"] == "anchor"]
    extensions = [a for a in report["allocations"] if a["kind"] == "extension"]
    assert len(anchors) == 1 and anchors[0]["nodes"] == 1
    # one extension per classical phase (the three clusterings of each iteration), released
    # before that iteration's quantum step ends (on an idle cluster auto releases too)
    assert len(extensions) == 2 and all(e["nodes"] == 2 for e in extensions)
    annealing = sorted(
        (s for s in report["steps"] if s["step"] == "/loop/annealing"),
        key=lambda s: s["iteration"],
    )
    for extension, quantum in zip(sorted(extensions, key=lambda e: e["started"]), annealing,
                                  strict=True):  # fmt: skip
        assert extension["ended"] <= quantum["ended"]
    _classical_steps_inside(report)
    held_equivalent = 3 * report["wall_s"]
    assert report["totals"]["node_seconds"] < held_equivalent
