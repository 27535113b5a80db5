"""The engine on cwltool: step paths, loop iterations, slots, resources, failures, cancel."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import pytest

from conftest import DATA, deployment_from, qflow_interruptible, run_in_process
from qflow.connector import JobOutcome, JobSpec, JobStartedCallback
from qflow.connectors.local import LocalConnector
from qflow.deployment import embedded_default
from qflow.engine.runner import run_cwl
from qflow.testing.processes import process_alive


def _max_overlap(records: list[dict]) -> int:
    """Largest number of step executions running at the same instant."""
    events = []
    for r in records:
        events += [(r["started"], 1), (r["ended"], -1)]
    level = best = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        level += delta
        best = max(best, level)
    return best


def test_jobs_know_step_path_and_loop_iteration(tmp_path: Path):
    result, outputs = run_in_process(DATA / "loop-counter.cwl", embedded_default(), tmp_path)
    assert result.exit_code == 0
    assert outputs == {"o": 4}  # 0 -> 2 -> 4: two iterations of two increments
    steps = [(r["step"], r["iteration"]) for r in result.report["steps"]]
    assert sorted(steps) == [
        ("/loop/first", 0),
        ("/loop/first", 1),
        ("/loop/second", 0),
        ("/loop/second", 1),
    ]
    records = result.report["steps"]
    assert all(r["location"] == "local" and r["connector"] == "local" for r in records)
    assert all(r["nodes"] == 0 and r["node_seconds"] == 0 for r in result.report["steps"])
    saved = json.loads((tmp_path / "qflow-report.json").read_text())
    assert saved["status"] == "success" and saved["totals"]["steps"] == 4


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_concurrency_is_bounded_by_slots(tmp_path: Path, slots: int):
    deployment = deployment_from(
        f"""
        version: 1
        locations:
          here: {{connector: local, slots: {slots}}}
        bindings:
          default: here
        """
    )
    result, _ = run_in_process(DATA / "sleep-scatter.cwl", deployment, tmp_path)
    assert result.exit_code == 0
    records = result.report["steps"]
    assert len(records) == 4
    assert _max_overlap(records) == slots


def test_candidates_in_order_spill_over_when_full(tmp_path: Path):
    deployment = deployment_from(
        """
        version: 1
        locations:
          first: {connector: local, slots: 1}
          second: {connector: local, slots: 3}
        bindings:
          /nap: [first, second]
        """
    )
    result, _ = run_in_process(DATA / "sleep-scatter.cwl", deployment, tmp_path)
    assert result.exit_code == 0
    used = sorted(r["location"] for r in result.report["steps"])
    assert used == ["first", "second", "second", "second"]


class RecordingConnector(LocalConnector):
    """The local connector, keeping every JobSpec it was handed."""

    seen: list[JobSpec] = []

    async def run(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        RecordingConnector.seen.append(job)
        return await super().run(job, on_started)


def test_resources_reach_the_connector_unchecked(tmp_path: Path, register_connector):
    register_connector("recording", RecordingConnector)
    RecordingConnector.seen = []
    deployment = deployment_from(
        """
        version: 1
        locations:
          remote: {connector: recording, nodes: 2}
        bindings:
          default: remote
        """
    )
    result, _ = run_in_process(DATA / "resources.cwl", deployment, tmp_path)
    assert result.exit_code == 0, "a job bigger than this host must not be refused"
    (spec,) = RecordingConnector.seen
    assert spec.resources.cores == 64
    assert spec.resources.ram_mib == 100000
    assert spec.resources.time_limit_s == 30
    assert spec.step == "/resources" and spec.iteration is None
    (record,) = result.report["steps"]
    assert record["nodes"] == 2
    assert record["node_seconds"] == pytest.approx(2 * (record["ended"] - record["started"]))


def test_time_limit_kills_the_step(tmp_path: Path):
    pidfile = tmp_path / "pid"
    result, _ = run_in_process(
        DATA / "timeout.cwl", embedded_default(), tmp_path / "out", "--pidfile", str(pidfile)
    )
    assert result.exit_code == 1
    (record,) = result.report["steps"]
    assert record["status"] == "failed"
    assert "time limit" in record["message"]
    assert not process_alive(int(pidfile.read_text()))


def test_failing_step_fails_the_run(tmp_path: Path):
    result, _ = run_in_process(DATA / "fail.cwl", embedded_default(), tmp_path)
    assert result.exit_code == 1
    assert result.report["status"] == "failed"
    assert [r["status"] for r in result.report["steps"]] == ["failed"]


def test_retries_resubmit_on_the_location(tmp_path: Path):
    deployment = deployment_from(
        """
        version: 1
        locations:
          here: {connector: local, retries: 2}
        bindings:
          default: here
        """
    )
    counter = tmp_path / "counter"
    result, _ = run_in_process(
        DATA / "flaky.cwl", deployment, tmp_path / "out", "--counter", str(counter)
    )
    assert result.exit_code == 0
    assert [r["status"] for r in result.report["steps"]] == ["failed", "success"]


def test_unbound_step_is_bad_input_and_runs_nothing(tmp_path: Path):
    deployment = deployment_from(
        """
        version: 1
        locations:
          here: {connector: local}
        bindings:
          /loop/first: here
        """
    )
    result, _ = run_in_process(DATA / "loop-counter.cwl", deployment, tmp_path)
    assert result.exit_code == 2
    assert result.report is None
    assert result.ledger.records() == []
    assert not (tmp_path / "qflow-report.json").exists()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_cancels_running_steps(tmp_path: Path, sig: int, code: int):
    pidfile = tmp_path / "pid"
    outdir = tmp_path / "out"
    proc = qflow_interruptible(
        "run", "--quiet", "--outdir", str(outdir), str(DATA / "sleep.cwl"),
        "--", "--pidfile", str(pidfile), "--seconds", "600",
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "the step never started"
            time.sleep(0.1)
        step_pid = int(pidfile.read_text())
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert not process_alive(step_pid), "the step's process survived the interrupt"
    report = json.loads((outdir / "qflow-report.json").read_text())
    assert report["status"] == "cancelled"
    assert [r["status"] for r in report["steps"]] == ["cancelled"]


class BrokenConnector(LocalConnector):
    """A connector whose submission fails (e.g. an unreachable resource manager)."""

    async def run(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        raise ConnectionError("resource manager unreachable")


def test_connector_error_fails_the_step_not_the_engine(tmp_path: Path, register_connector):
    register_connector("broken", BrokenConnector)
    deployment = deployment_from(
        """
        version: 1
        locations:
          bad: {connector: broken}
        bindings:
          default: bad
        """
    )
    result, _ = run_in_process(DATA / "loop-counter.cwl", deployment, tmp_path)
    assert result.exit_code == 1
    (record,) = result.report["steps"]
    assert record["status"] == "failed"
    assert "resource manager unreachable" in record["message"]


def test_a_failing_progress_listener_does_not_break_the_run(tmp_path: Path):
    from qflow.reporting.ledger import Ledger

    ledger = Ledger()

    def broken(event: str, record: object) -> None:
        raise BrokenPipeError("stderr closed")

    ledger.subscribe(broken)
    out = io.StringIO()
    result = run_cwl(
        ["--quiet", "--outdir", str(tmp_path), str(DATA / "loop-counter.cwl")],
        embedded_default(),
        stdout=out,
        ledger=ledger,
    )
    assert result.exit_code == 0
    assert json.loads(out.getvalue()) == {"o": 4}
