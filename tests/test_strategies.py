"""Allocation strategies on a real Slurm cluster: what each one holds, and when."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, qflow_cli

pytestmark = pytest.mark.slurm

CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"
INPUTS = ["--", "--n_samples", "600", "--max_iterations", "2", "--threshold", "0.99"]


def _run(strategy: str, slurm_cluster: Any, tmp_path: Path, loop_binding: str = "") -> dict:
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
  {"/loop: " + loop_binding if loop_binding else ""}
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


def test_a_binding_sets_the_strategy_of_its_steps(slurm_cluster: Any, tmp_path: Path):
    report = _run("per-step", slurm_cluster, tmp_path, "{locations: compute, allocation: held}")
    (held,) = report["allocations"]
    assert held["kind"] == "held"
    (generate,) = [s for s in report["steps"] if s["step"] == "/generate"]
    assert "@" not in generate["external_id"] and generate["node_seconds"] > 0  # own job
    loop = [
        s for s in report["steps"] if s["step"].startswith("/loop/") and s["location"] == "compute"
    ]
    assert loop and all(s["external_id"].startswith(held["external_id"] + "@") for s in loop)
    assert generate["ended"] <= held["started"] + 1  # held from the loop's first step


def _annealing(report: dict) -> list[dict]:
    steps = (s for s in report["steps"] if s["step"] == "/loop/annealing")
    return sorted(steps, key=lambda s: s["iteration"])


def test_malleable_shrinks_to_its_anchor_during_quantum_phases(slurm_cluster: Any, tmp_path: Path):
    report = _run("malleable", slurm_cluster, tmp_path)
    anchors = [a for a in report["allocations"] if a["kind"] == "anchor"]
    extensions = [a for a in report["allocations"] if a["kind"] == "extension"]
    assert len(anchors) == 1 and anchors[0]["nodes"] == 1
    # one extension per classical phase (the three clusterings of each iteration), released
    # before that iteration's quantum step ends
    assert len(extensions) == 2 and all(e["nodes"] == 2 for e in extensions)
    for extension, quantum in zip(sorted(extensions, key=lambda e: e["started"]),
                                  _annealing(report), strict=True):  # fmt: skip
        assert extension["ended"] <= quantum["ended"]
    _classical_steps_inside(report)
    assert report["totals"]["node_seconds"] < 3 * report["wall_s"]


def test_auto_on_an_idle_cluster_holds_nodes_only_while_steps_use_them(
    slurm_cluster: Any, tmp_path: Path
):
    report = _run("auto", slurm_cluster, tmp_path)
    allocations = report["allocations"]
    assert all(a["nodes"] == 1 for a in allocations)  # one node each: given back one by one
    # nobody else on the partition and grants in ms: every quantum phase releases all nodes,
    # the anchor too, and the next classical step is granted a new anchor
    anchors = [a for a in allocations if a["kind"] == "anchor"]
    assert len(anchors) >= len(_annealing(report)) + 1
    for quantum in _annealing(report):
        assert all(a["ended"] <= quantum["ended"] for a in allocations
                   if a["started"] <= quantum["started"])  # fmt: skip
    # an extension is given back when its last step ends and no step waits for a node
    for extension in (a for a in allocations if a["kind"] == "extension"):
        prefix = extension["external_id"] + "@"
        inside = [s for s in report["steps"] if (s["external_id"] or "").startswith(prefix)]
        assert inside and extension["ended"] <= max(s["ended"] for s in inside) + 1.5
    _classical_steps_inside(report)


@pytest.mark.parametrize(
    ("strategy", "quantum_s", "grant_wait_s", "others_pending", "decision"),
    [
        ("held", [10.0], [0.01], False, "keep"),
        ("malleable", [0.1], [5.0], False, "shrink"),
        ("auto", [], [], False, "shrink"),  # nothing granted yet: as malleable
        ("auto", [], [0.01], False, "release"),  # first quantum phase, nobody else
        ("auto", [], [0.01], True, "shrink"),  # the same, but a job waits
        ("auto", [10.0, 6.0], [0.01, 3.0], False, "release"),  # 8 s > 2 x 1.5 s (mean wait)
        ("auto", [10.0, 6.0], [0.01, 3.0], True, "shrink"),  # the same, but a job waits
        ("auto", [10.0, 6.0], [0.01, 9.0], False, "keep"),  # 8 s < 2 x 4.5 s
        ("auto", [0.3], [0.2], False, "keep"),  # 0.3 s < 2 x 0.2 s, nobody else waits
        ("auto", [0.3], [0.2], True, "shrink"),  # the same, but a job waits for nodes
    ],
)  # fmt: skip
def test_the_decision_at_a_quantum_phase(
    slurm_cluster: Any,
    tmp_path: Path,
    strategy: str,
    quantum_s: list[float],
    grant_wait_s: list[float],
    others_pending: bool,
    decision: str,
):
    from qflow.connectors.slurm import SlurmConnector
    from qflow.connectors.slurm_allocation import SlurmAllocations

    config = SlurmConnector.Config(connector="slurm", partition="compute",
                                   slurm_conf=str(slurm_cluster.conf))  # fmt: skip
    allocations = SlurmAllocations(SlurmConnector("c", config), strategy, None)
    allocations._quantum_phases, allocations._grant_waits = quantum_s, grant_wait_s
    pending = None
    if others_pending:  # a job that cannot start for an hour
        pending = slurm_cluster.run("sbatch", "--parsable", "--partition=compute",
                                    "--begin=now+3600", "--output=/dev/null",
                                    "--wrap=true").strip()  # fmt: skip
    try:
        assert asyncio.run(allocations.decide()) == decision
        if strategy == "auto" and grant_wait_s:  # contention, once seen, is remembered
            assert allocations._contended == others_pending
    finally:
        if pending:
            slurm_cluster.run("scancel", pending)
    if strategy == "auto" and others_pending:
        assert asyncio.run(allocations.decide()) == "shrink"  # nobody waits any more


def test_auto_notices_a_grant_that_had_to_queue(slurm_cluster: Any, tmp_path: Path):
    from qflow.connectors.slurm import SlurmConnector
    from qflow.connectors.slurm_allocation import SlurmAllocations

    config = SlurmConnector.Config(connector="slurm", partition="compute",
                                   slurm_conf=str(slurm_cluster.conf))  # fmt: skip
    connector = SlurmConnector("c", config)
    allocations = SlurmAllocations(connector, "auto", None)
    blocker = slurm_cluster.run("sbatch", "--parsable", "--partition=compute", "--nodes=3",
                                "--exclusive", "--output=/dev/null",
                                "--wrap=sleep 2").strip()  # fmt: skip
    for _ in range(100):  # batch jobs start on Slurm's 1 s tick
        if slurm_cluster.run("squeue", "-h", "-j", blocker, "-o", "%T").strip() == "RUNNING":
            break
        time.sleep(0.05)

    async def main() -> None:
        await connector._prepare()
        try:
            allocation = await allocations._salloc(1, "anchor", [])  # queues behind the blocker
            await connector.end_job(allocation.jobid, allocation.resource)
        finally:
            await connector.stop()

    try:
        asyncio.run(main())
    finally:
        slurm_cluster.run("scancel", blocker)
    assert allocations._contended


def test_waiting_steps_get_nodes_longest_expected_first():
    from qflow.connectors.slurm import SlurmConnector
    from qflow.connectors.slurm_allocation import SlurmAllocations, _Allocation
    from qflow.rundir.journal import Resource

    config = SlurmConnector.Config(connector="slurm", partition="compute", held_nodes=1)
    allocations = SlurmAllocations(SlurmConnector("c", config), "held", None)
    held = _Allocation("7", ["c1"], "held", 0.0, Resource("s-1", "slurm-allocation", "c"))
    allocations._held = [held]  # one node, no Slurm call needed
    allocations._expected = {"/a": 1.0, "/b": 5.0}
    order: list[str] = []

    async def step(path: str) -> None:
        allocation, node = await allocations._take_node(allocations._expected.get(path, 0.0))
        order.append(path)
        await asyncio.sleep(0.01)
        async with allocations._changed:
            allocation.busy.discard(node)
            allocations._changed.notify_all()

    async def main() -> None:
        first = await allocations._take_node(0.0)  # the node is busy while the others queue
        tasks = [asyncio.create_task(step(p)) for p in ("/c", "/a", "/b", "/d")]
        await asyncio.sleep(0.05)
        assert order == []
        async with allocations._changed:
            first[0].busy.discard(first[1])
            allocations._changed.notify_all()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == ["/b", "/a", "/c", "/d"]  # longest known first, unknown ones in arrival order
