"""Workflows through `qflow run` on a real local Slurm cluster (per-step allocation)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, REPO, qflow_cli, qflow_interruptible

pytestmark = pytest.mark.slurm

CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"
SLURM_DEPLOYMENT = REPO / "deployments" / "local-slurm" / "deployment.yml"


def _deployment(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "slurm.yml"
    path.write_text(
        "version: 1\nlocations:\n"
        f"  compute: {{connector: slurm, partition: compute, slots: 6{extra}}}\n"
        "bindings:\n  default: compute\n"
    )
    return path


def test_clustering_on_the_papers_layout(slurm_cluster: Any, tmp_path: Path):
    proc = qflow_cli(
        "run", str(CLUSTERING), str(SLURM_DEPLOYMENT), "--quiet", "--outdir", str(tmp_path),
        "--", "--n_samples", "1000", "--max_iterations", "2", "--threshold", "0.99",
        env=slurm_cluster.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "qflow-report.json").read_text())
    steps = report["steps"]
    assert len(steps) == 1 + 6 * 2
    job_ids = [r["external_id"] for r in steps]
    assert all(j and j.isdigit() for j in job_ids) and len(set(job_ids)) == len(steps)
    by_iteration: dict[int, dict[str, dict]] = defaultdict(dict)
    for r in steps:
        assert r["status"] == "success" and r["nodes"] == 1
        assert r["node_seconds"] == pytest.approx(r["ended"] - r["started"], abs=1e-6)
        if r["step"] == "/loop/annealing":
            assert r["location"] == "quantum" and r["quantum"]
        else:
            assert r["location"] == "compute" and not r["quantum"]
        if r["iteration"] is not None:
            by_iteration[r["iteration"]][r["step"]] = r
    for rows in by_iteration.values():  # the three clusterings run side by side, one node each
        clusterings = [rows[f"/loop/{m}"] for m in ("kmeans", "dbscan", "hierarchical")]
        assert max(r["started"] for r in clusterings) < min(r["ended"] for r in clusterings)
    assert not slurm_cluster.active_jobs()


def test_failing_step_and_retries(slurm_cluster: Any, tmp_path: Path):
    failing = qflow_cli(
        "run", str(DATA / "fail.cwl"), str(_deployment(tmp_path)), "--quiet",
        "--outdir", str(tmp_path / "f"), env=slurm_cluster.env,
    )  # fmt: skip
    assert failing.returncode == 1
    (record,) = json.loads((tmp_path / "f" / "qflow-report.json").read_text())["steps"]
    assert record["status"] == "failed" and record["external_id"].isdigit()

    flaky = qflow_cli(
        "run", str(DATA / "flaky.cwl"), str(_deployment(tmp_path, ", retries: 1")), "--quiet",
        "--outdir", str(tmp_path / "r"), "--", "--counter", str(tmp_path / "counter"),
        env=slurm_cluster.env,
    )  # fmt: skip
    assert flaky.returncode == 0, flaky.stderr[-2000:]
    records = json.loads((tmp_path / "r" / "qflow-report.json").read_text())["steps"]
    assert [r["status"] for r in records] == ["failed", "success"]
    assert records[0]["external_id"] != records[1]["external_id"]  # two Slurm jobs


def test_ctrl_c_cancels_every_slurm_job(slurm_cluster: Any, tmp_path: Path):
    proc = qflow_interruptible(
        "run", "--quiet", "--outdir", str(tmp_path / "o"), str(DATA / "sleep-scatter.cwl"),
        str(_deployment(tmp_path)), "--", "--seconds", "300", "--seconds", "300",
        "--seconds", "300", env=slurm_cluster.env,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while len(slurm_cluster.active_jobs()) < 3:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert slurm_cluster.active_jobs() == [], "qflow left Slurm jobs behind"
    report = json.loads((tmp_path / "o" / "qflow-report.json").read_text())
    assert report["status"] == "cancelled"
    assert [r["status"] for r in report["steps"]] == ["cancelled"] * 3


def test_a_killed_slurmd_fails_the_step_with_slurms_reason_then_retries(
    tmp_path_factory: pytest.TempPathFactory,
):
    """Fault injected for real: the node running the step loses its slurmd mid-step."""
    import os

    from qflow.testing.slurm_cluster import ClusterUnavailable, start_cluster, stop_cluster

    directory = tmp_path_factory.mktemp("faulty-cluster")  # not the shared cluster: a node dies
    try:
        cluster = start_cluster(directory)
    except ClusterUnavailable as exc:
        pytest.skip(f"no local Slurm cluster: {exc}")
    tmp_path = tmp_path_factory.mktemp("node-failure")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qflow.cli", "run", "--quiet", "--outdir", str(tmp_path / "o"),
             str(DATA / "long-first-time.cwl"),
             str(_deployment(tmp_path, ", retries: 1, squeue_interval: 2")),  # NODE_FAIL: no marker
             "--", "--pidfile", str(tmp_path / "pid")],
            cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.time() + 60
        while not (tmp_path / "pid").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        (job,) = cluster.active_jobs()
        node = cluster.run("squeue", "--noheader", "-j", job, "-o", "%N").strip()
        os.kill(int((directory / f"slurmd-{node}.pid").read_text()), signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        report = json.loads((tmp_path / "o" / "qflow-report.json").read_text())
        first, retry = report["steps"]
        assert first["status"] == "failed" and "NODE_FAIL" in first["message"]
        assert retry["status"] == "success" and retry["external_id"] != first["external_id"]
    finally:
        stop_cluster(directory)
