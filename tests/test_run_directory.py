"""The run directory never lies: crashes, resumes, a second run, bad input, interrupts.

Every test runs the real ``qflow`` command and crashes it for real (SIGKILL: no cleanup of
any kind), then reads what the crashed run left: its processes, its journal, its files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from conftest import DATA, qflow_cli, qflow_interruptible
from qflow.connectors.local import tagged_process_groups
from qflow.rundir.journal import read_journal
from qflow.testing.processes import process_alive

CRASH = DATA / "crash-points.cwl"


def _wait(condition: Callable[[], bool], proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc is None or proc.poll() is None, "qflow ended before the awaited moment"
        assert time.monotonic() < deadline, "the awaited moment never came"
        time.sleep(0.02)


def _starts(log: Path) -> list[tuple[str, int]]:
    """("b", pid) per execution started, in order (tests/data/mark.cwl writes them)."""
    if not log.exists():
        return []
    lines = [line.split() for line in log.read_text().splitlines()]
    return [(parts[1], int(parts[2])) for parts in lines if len(parts) == 3]


def _crash_while_b_and_c_run(rundir: Path, log: Path) -> dict[str, int]:
    """Start the crash workflow, SIGKILL qflow once c started (b still runs); name -> pid."""
    proc = qflow_interruptible("run", str(CRASH), "--quiet", "--outdir", str(rundir),
                               "--", "--log", str(log), "--long", "6")  # fmt: skip
    _wait(lambda: "c" in dict(_starts(log)), proc)
    _kill_9(proc)
    return dict(_starts(log))


def _kill_9(proc: subprocess.Popen) -> None:
    """A crash: SIGKILL, no cleanup. The steps it started keep its stderr open: do not read
    it to the end (that would wait for them)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _snapshot(rundir: Path) -> dict[str, bytes | None]:
    state = rundir / ".qflow"
    files = {p: p.read_bytes() for p in state.rglob("*") if p.is_file() and p.name != "lock"}
    return {str(p.relative_to(state)): data for p, data in sorted(files.items())}


def test_a_crash_with_overlapping_executions_ends_both_and_runs_no_step_twice(tmp_path: Path):
    rundir, log = tmp_path / "run", tmp_path / "starts.log"
    old = _crash_while_b_and_c_run(rundir, log)
    assert process_alive(old["b"]) and process_alive(old["c"])
    alive = read_journal(rundir / ".qflow" / "journal.jsonl").alive
    assert {r.step for r in alive} == {"/b", "/c"}
    assert len({r.id for r in alive}) == 2  # one id each, never reused

    # resumed from another shell whose PATH differs: that must not prevent reuse
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    resumed = qflow_interruptible("run", "--resume", str(rundir), "--quiet", env=env)
    seen, twice = len(_starts(log)), []
    while resumed.poll() is None:  # every new start: the crashed run's one must be gone
        new = _starts(log)[seen:]
        twice += [name for name, _ in new if name in old and process_alive(old[name])]
        seen += len(new)
        time.sleep(0.005)
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err[-2000:]
    assert twice == []
    assert not any(process_alive(pid) for pid in old.values())
    assert not any(tagged_process_groups(r.id) for r in alive)
    report = json.loads((rundir / "qflow-report.json").read_text())
    status = {r["step"]: r["status"] for r in report["steps"]}
    assert status == {"/a": "reused", "/b": "success", "/c": "success", "/d": "success"}
    assert "ended what the interrupted run left" in err or not err  # --quiet: said if shown
    assert read_journal(rundir / ".qflow" / "journal.jsonl").alive == []
    assert json.loads(out)["out_d"]["basename"] == "out.txt"


def test_a_second_run_in_a_busy_directory_is_refused_and_the_first_goes_on(tmp_path: Path):
    rundir, log = tmp_path / "run", tmp_path / "starts.log"
    first = qflow_interruptible("run", str(CRASH), "--quiet", "--outdir", str(rundir),
                                "--", "--log", str(log))  # fmt: skip
    _wait(lambda: "a" in dict(_starts(log)), first)
    second = qflow_cli("run", str(CRASH), "--quiet", "--outdir", str(rundir), "--", "--log",
                       str(tmp_path / "other.log"))  # fmt: skip
    assert second.returncode == 2
    assert f"in use by qflow process {first.pid}" in second.stderr and "Fix:" in second.stderr
    assert not (tmp_path / "other.log").exists()  # it ran nothing
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]


def test_a_crashed_directory_survives_bad_input_and_is_refused_until_cleaned(tmp_path: Path):
    rundir, log = tmp_path / "run", tmp_path / "starts.log"
    old = _crash_while_b_and_c_run(rundir, log)
    before = _snapshot(rundir)

    bad = qflow_cli("run", str(CRASH), str(tmp_path / "missing.yml"), "--outdir", str(rundir))
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    garbage = tmp_path / "bad-deployment.yml"
    garbage.write_text("version: 1\nlocations: {here: {connector: nope}}\n")
    bad = qflow_cli("run", str(CRASH), str(garbage), "--outdir", str(rundir))
    assert bad.returncode == 2 and "unknown connector" in bad.stderr
    good = qflow_cli("run", str(CRASH), "--outdir", str(rundir), "--", "--log", str(log))
    assert good.returncode == 2
    assert "qflow run --resume" in good.stderr and "qflow clean" in good.stderr
    assert _snapshot(rundir) == before  # not a byte of the crashed run's state changed
    assert process_alive(old["b"])  # and nothing of it was touched

    cleaned = qflow_cli("clean", str(rundir))
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stderr.count("ended: ") == 2
    assert not process_alive(old["b"]) and not process_alive(old["c"])
    assert read_journal(rundir / ".qflow" / "journal.jsonl").alive == []
    again = qflow_cli("run", str(CRASH), "--quiet", "--outdir", str(rundir), "--", "--log",
                      str(log))  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_resume_says_why_an_execution_is_not_reused(tmp_path: Path):
    rundir, log, data = tmp_path / "run", tmp_path / "starts.log", tmp_path / "data.txt"
    data.write_text("one\n")
    proc = qflow_interruptible("run", str(CRASH), "--quiet", "--outdir", str(rundir), "--",
                               "--log", str(log), "--long", "6", "--data", str(data))  # fmt: skip
    _wait(lambda: "c" in dict(_starts(log)), proc)
    _kill_9(proc)
    data.write_text("two\n")  # a's input is not what it was
    resumed = qflow_cli("run", "--resume", str(rundir), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "/a runs again, not reused: its inputs differ" in resumed.stderr
    report = json.loads((rundir / "qflow-report.json").read_text())
    assert {r["step"]: r["status"] for r in report["steps"]}["/a"] == "success"


def test_a_step_that_ignores_sigterm_is_killed_when_the_run_is_terminated(tmp_path: Path):
    pidfile = tmp_path / "pid"
    proc = qflow_interruptible("run", str(DATA / "stubborn.cwl"), "--quiet", "--outdir",
                               str(tmp_path / "o"), "--", "--pidfile", str(pidfile))  # fmt: skip
    _wait(lambda: pidfile.exists() and pidfile.read_text().strip() != "", proc)
    pid = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert not process_alive(pid)


def test_a_crashed_runs_step_that_ignores_sigterm_is_killed_by_clean(tmp_path: Path):
    pidfile, rundir = tmp_path / "pid", tmp_path / "o"
    proc = qflow_interruptible("run", str(DATA / "stubborn.cwl"), "--quiet", "--outdir",
                               str(rundir), "--", "--pidfile", str(pidfile))  # fmt: skip
    _wait(lambda: pidfile.exists() and pidfile.read_text().strip() != "", proc)
    _kill_9(proc)
    pid = int(pidfile.read_text())
    assert process_alive(pid)
    cleaned = qflow_cli("clean", str(rundir))
    assert cleaned.returncode == 0 and "ended: /stubborn" in cleaned.stderr
    assert not process_alive(pid)


def test_ctrl_c_twice_stops_waiting_but_writes_the_report(tmp_path: Path):
    pidfile, rundir = tmp_path / "pid", tmp_path / "o"
    proc = qflow_interruptible("run", str(DATA / "stubborn.cwl"), "--outdir", str(rundir),
                               "--", "--pidfile", str(pidfile))  # fmt: skip
    _wait(lambda: pidfile.exists() and pidfile.read_text().strip() != "", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the step ignores SIGTERM: qflow waits out its grace period
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "interrupted again" in err
    report = json.loads((rundir / "qflow-report.json").read_text())
    assert report["status"] == "cancelled"
    assert [r["status"] for r in report["steps"]] == ["cancelled"]
    _wait(lambda: not process_alive(int(pidfile.read_text())))


def test_bad_job_orders_are_refused_before_anything_is_written(tmp_path: Path):
    tool = str(DATA / "required-input.cwl")
    data = tmp_path / "data.txt"
    data.write_text("x\n")
    cases = {
        "missing.yml": f"data: {{class: File, path: {data}}}\n",
        "wrong-type.yml": f"count: many\ndata: {{class: File, path: {data}}}\n",
        "no-file.yml": f"count: 1\ndata: {{class: File, path: {tmp_path / 'nope.txt'}}}\n",
    }
    for name, text in cases.items():
        job = tmp_path / name
        job.write_text(text)
        outdir = tmp_path / f"out-{name}"
        proc = qflow_cli("run", tool, str(job), "--outdir", str(outdir))
        assert proc.returncode == 2, (name, proc.stderr)
        assert str(job) in proc.stderr and "Fix:" in proc.stderr, (name, proc.stderr)
        assert not outdir.exists(), name


def test_unwritable_outdir_or_report_is_refused_before_the_run(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    tool = str(DATA / "sleep.cwl")
    proc = qflow_cli("run", tool, "--outdir", str(blocker / "sub"))
    assert proc.returncode == 2 and "--outdir" in proc.stderr and "Fix:" in proc.stderr
    outdir = tmp_path / "o"
    proc = qflow_cli("run", tool, "--outdir", str(outdir), "--report", str(blocker / "r.json"))
    assert proc.returncode == 2 and "--report" in proc.stderr and "Traceback" not in proc.stderr
    assert not outdir.exists()  # refused before the run, not after it


def test_resume_refuses_a_damaged_run_record_and_honours_report(tmp_path: Path):
    rundir = tmp_path / "run"
    assert qflow_cli("run", str(DATA / "sleep.cwl"), "--quiet", "--outdir", str(rundir), "--",
                     "--seconds", "0.1").returncode == 0  # fmt: skip
    elsewhere = tmp_path / "elsewhere.json"
    resumed = qflow_cli("run", "--resume", str(rundir), "--quiet", "--report", str(elsewhere))
    assert resumed.returncode == 0 and json.loads(elsewhere.read_text())["status"] == "success"
    (rundir / ".qflow" / "run.json").write_text("{not json")
    damaged = qflow_cli("run", "--resume", str(rundir))
    assert damaged.returncode == 2 and "not a qflow run record" in damaged.stderr
    assert "Traceback" not in damaged.stderr


def test_a_failed_loop_iteration_fails_the_run_without_a_traceback(tmp_path: Path):
    proc = qflow_cli("run", str(DATA / "loop-fails.cwl"), "--outdir", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" not in proc.stderr
    assert "'NoneType' object is not a mapping" not in proc.stderr
    report = json.loads((tmp_path / "o" / "qflow-report.json").read_text())
    assert [r["status"] for r in report["steps"]] == ["success", "failed"]


def test_the_journal_gives_every_execution_its_own_id(tmp_path: Path):
    proc = qflow_cli("run", str(DATA / "sleep-scatter.cwl"), "--quiet", "--outdir",
                     str(tmp_path / "o"), "--", "--seconds", "0.1", "--seconds", "0.3",
                     "--seconds", "0.1", "--seconds", "0.2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (tmp_path / "o/.qflow/journal.jsonl").read_text().split("\n")
             if x]  # fmt: skip
    intended = [e["id"] for e in lines if e["op"] == "intend"]
    assert len(intended) == 4 == len(set(intended))
    assert {e["id"] for e in lines if e["op"] == "ended"} == set(intended)
    assert lines[-1]["op"] == "run-ended" and lines[-1]["status"] == "success"
