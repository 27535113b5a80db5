"""QPU tasks and leases leave nothing behind: a crash, a status that cannot be read, a hung
QPU, and the cause of a failure kept end to end. Real emulator processes, the real CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, qflow_cli, qflow_interruptible
from qflow.rundir.journal import read_journal
from qflow.testing.qpu_services import serve

QUBO = DATA / "mis5.qubo.json"
SOLVE = DATA / "qubo-solve.cwl"
TOKEN = "qpu-crash-vendor-41c7"


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QPU_TOKEN", TOKEN)


@contextmanager
def qpu(backend: str = "neutral-atom", time_scale: float = 0.1) -> Iterator[str]:
    args = ["qflow.emulator", "--port", "0", "--backend", backend, "--time-scale", str(time_scale)]
    with serve(args, {"QFLOW_EMULATOR_TOKEN": TOKEN}, "qflow emulator listening on") as url:
        yield url


def _call(url: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _tasks(url: str) -> list[dict[str, Any]]:
    return _call(url, "GET", "/v1/tasks")["tasks"]


def _deployment(tmp_path: Path, url: str, max_wait: float = 60) -> Path:
    path = tmp_path / "deployment.yml"
    path.write_text(
        f"""version: 1
locations:
  local: {{connector: local, slots: 2}}
  qpu: {{connector: rest, url: "{url}", token: "${{env:QPU_TOKEN}}", http_retries: 1,
         backoff: 0.05, timeout: 30, max_wait: {max_wait}}}
bindings:
  default: local
  /solve: [qpu, local]
"""
    )
    return path


def _wait(condition: Any, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc is None or proc.poll() is None, "qflow ended before the awaited moment"
        assert time.monotonic() < deadline, "the awaited moment never came"
        time.sleep(0.05)


def test_a_crashed_runs_qpu_task_is_stopped_at_the_qpu_by_the_resume(tmp_path: Path):
    rundir = tmp_path / "run"
    with qpu(time_scale=0.1) as url:  # 12 s per task: the resume starts well before its end
        proc = qflow_interruptible("run", str(SOLVE), str(_deployment(tmp_path, url)),
                                   "--quiet", "--outdir", str(rundir), "--",
                                   "--qubo", str(QUBO))  # fmt: skip
        _wait(lambda: any(t["state"] == "running" for t in _tasks(url)), proc)
        proc.send_signal(signal.SIGKILL)  # a crash, while the QPU works for it
        proc.wait()
        (crashed,) = _tasks(url)
        alive = read_journal(rundir / ".qflow" / "journal.jsonl").alive
        assert {r.kind for r in alive} == {"execution", "qpu-task"}
        assert [r.external_id for r in alive if r.kind == "qpu-task"] == [crashed["id"]]

        resumed = qflow_cli("run", "--resume", str(rundir), "--quiet")
        tasks = {t["id"]: t for t in _tasks(url)}
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert tasks.pop(crashed["id"])["state"] == "cancelled"  # not run to its end
    assert [t["state"] for t in tasks.values()] == ["completed"]  # the resumed run's own
    assert read_journal(rundir / ".qflow" / "journal.jsonl").alive == []
    report = json.loads((rundir / "qflow-report.json").read_text())
    assert [(r["location"], r["status"]) for r in report["steps"]] == [("qpu", "success")]


def test_a_task_whose_state_cannot_be_read_is_stopped_and_its_qpu_time_kept(tmp_path: Path):
    with qpu(time_scale=0.025) as url:  # 3 s per task
        _call(url, "POST", "/v1/admin/faults",
              {"mode": "http500", "method": "GET", "paths": "/v1/tasks/"})  # fmt: skip
        proc = qflow_cli("run", str(SOLVE), str(_deployment(tmp_path, url)), "--outdir",
                         str(tmp_path / "o"), "--", "--qubo", str(QUBO))  # fmt: skip
        _call(url, "POST", "/v1/admin/faults", {"mode": "none"})
        time.sleep(3.5)  # longer than the task would have taken had it been left running
        (task,) = _tasks(url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert task["state"] == "cancelled"  # stopped by id, although its state was unreadable
    report = json.loads((tmp_path / "o" / "qflow-report.json").read_text())
    failed, fallback = report["steps"]
    assert failed["quantum"] and failed["status"] == "failed"
    assert failed["qpu_seconds"] > 0  # estimated: the QPU worked for it
    assert "estimated" in failed["message"] and "could not be read" in failed["message"]
    assert fallback["fallback"] and fallback["status"] == "success"


def test_a_hung_qpu_costs_one_request_timeout_and_is_blamed_by_name(tmp_path: Path):
    with qpu() as url:
        _call(url, "POST", "/v1/admin/faults", {"mode": "hang", "paths": "/v1/status"})
        # with max_wait 600 a wait of max_wait + 30 s would exceed the test's own timeout
        proc = qflow_cli("run", str(SOLVE), str(_deployment(tmp_path, url, max_wait=600)),
                         "--outdir", str(tmp_path / "o"), "--", "--qubo", str(QUBO),
                         timeout=120)  # fmt: skip
        _call(url, "POST", "/v1/admin/faults", {"mode": "none"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "o" / "qflow-report.json").read_text())
    (record,) = report["steps"]
    assert record["fallback"] and record["location"] == "local"
    assert "QPU qpu did not answer its status request" in record["fallback_reason"]
    assert "gateway" not in record["fallback_reason"]


def test_why_a_quantum_execution_failed_reaches_the_report_and_one_warning(tmp_path: Path):
    with qpu("superconducting", 1) as url:
        _call(url, "POST", "/v1/admin/faults",
              {"mode": "http500", "method": "POST", "paths": "/v1/tasks"})  # fmt: skip
        proc = qflow_cli("run", str(SOLVE), str(_deployment(tmp_path, url)), "--outdir",
                         str(tmp_path / "o"), "--", "--qubo", str(QUBO))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "o" / "qflow-report.json").read_text())
    failed, fallback = report["steps"]
    assert "injected fault" in failed["message"]  # the QPU's own words
    assert "injected fault" in fallback["fallback_reason"]
    logged = [line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert len(logged) == 1 and "falling back" in logged[0], logged
    table = qflow_cli("report", str(tmp_path / "o"))
    assert table.returncode == 0 and "injected fault" in table.stdout
