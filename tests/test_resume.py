"""Resume: kill -9 the orchestrator in the middle of the clustering loop, then --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import REPO, qflow_cli
from qflow.connectors.local import tagged_process_groups
from qflow.rundir.journal import read_journal
from qflow.rundir.state import JsonLines
from qflow.testing.processes import process_alive

CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"
# two iterations: no consensus reaches the threshold
INPUTS = ["--", "--n_samples", "1000", "--max_iterations", "2", "--threshold", "0.99"]


def _lines(path: Path) -> list[dict]:
    return JsonLines(path).read()


def _ended(rundir: Path) -> list[dict]:
    return _lines(rundir / ".qflow" / "records.jsonl")


def test_kill_9_then_resume_gives_the_same_outputs_without_recomputing(tmp_path: Path):
    reference = qflow_cli("run", str(CLUSTERING), "--quiet", "--outdir", str(tmp_path / "ref"),
                          *INPUTS)  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = json.loads(reference.stdout)

    rundir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qflow.cli", "run", str(CLUSTERING), "--quiet",
         "--outdir", str(rundir), *INPUTS],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 180
    while not any(r["step"] == "/loop/qubo" and r["iteration"] == 1 for r in _ended(rundir)):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # a crash: no cleanup of any kind
    proc.wait()
    finished_before = {(r["step"], r["iteration"]) for r in _ended(rundir)}
    leftovers = read_journal(rundir / ".qflow" / "journal.jsonl").alive

    resumed = qflow_cli("run", "--resume", str(rundir), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    out = json.loads(resumed.stdout)
    assert out["score"] == expected["score"] and out["iterations"] == expected["iterations"]
    assert np.array_equal(np.load(out["labels"]["path"]), np.load(expected["labels"]["path"]))

    report = json.loads((rundir / "qflow-report.json").read_text())
    reused = {(r["step"], r["iteration"]) for r in report["steps"] if r["status"] == "reused"}
    assert reused == finished_before, "every finished execution reused, nothing else"
    assert ("/loop/kmeans", 0) in reused and ("/loop/qubo", 1) in reused
    assert all(r["status"] in ("success", "reused") for r in report["steps"])
    # what the crashed run left running on this host was ended, not orphaned
    pids = [int(r.external_id) for r in leftovers if r.external_id]
    assert not any(process_alive(pid) for pid in pids)
    assert not any(tagged_process_groups(r.id) for r in leftovers)
    assert read_journal(rundir / ".qflow" / "journal.jsonl").alive == []


def test_resume_refuses_a_directory_without_a_run(tmp_path: Path):
    proc = qflow_cli("run", "--resume", str(tmp_path))
    assert proc.returncode == 2 and "holds no qflow run" in proc.stderr
