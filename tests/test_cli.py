"""The qflow command as users type it: exit codes, messages, the report table."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import DATA, REPO, qflow_cli

LOCAL = REPO / "deployments" / "local.yml"
CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_validate_accepts_the_use_case_and_its_deployment():
    proc = qflow_cli("validate", str(CLUSTERING), str(LOCAL))
    assert proc.returncode == 0, proc.stderr
    assert "every step is bound" in proc.stderr


def test_validate_names_file_line_and_fix_for_an_unknown_connector(tmp_path: Path):
    bad = _write(
        tmp_path / "deploy.yml",
        "version: 1\nlocations:\n  here:\n    connector: lokal\nbindings:\n  default: here\n",
    )
    proc = qflow_cli("validate", str(CLUSTERING), str(bad))
    assert proc.returncode == 2
    assert f"{bad}:4" in proc.stderr and "lokal" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_reports_unbound_steps_of_the_workflow(tmp_path: Path):
    partial = _write(
        tmp_path / "deploy.yml",
        "version: 1\nlocations:\n  here: {connector: local}\nbindings:\n  /generate: here\n",
    )
    proc = qflow_cli("validate", str(CLUSTERING), str(partial))
    assert proc.returncode == 2
    assert "/loop/annealing is not bound" in proc.stderr


def test_run_refuses_bad_input_before_running_anything(tmp_path: Path):
    missing = qflow_cli("run", str(tmp_path / "nope.cwl"), "--outdir", str(tmp_path))
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    broken = _write(tmp_path / "broken.cwl", "cwlVersion: v1.2\nclass: CommandLineTool\n")
    invalid = qflow_cli("run", str(broken), "--outdir", str(tmp_path / "out"))
    assert invalid.returncode == 2
    assert not (tmp_path / "out" / "qflow-report.json").exists()

    bad_deployment = _write(tmp_path / "d.yml", "version: 2\nlocations: {}\n")
    proc = qflow_cli("run", str(DATA / "fail.cwl"), str(bad_deployment), "--outdir", str(tmp_path))
    assert proc.returncode == 2 and f"{bad_deployment}:1" in proc.stderr


def test_run_then_report_table(tmp_path: Path):
    run = qflow_cli("run", "--outdir", str(tmp_path), str(DATA / "loop-counter.cwl"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"o": 4}
    assert "[ended] /loop/second #1 on local success" in run.stderr  # progress, not a terminal
    report = tmp_path / "qflow-report.json"
    table = qflow_cli("report", str(report), "--plot", str(tmp_path / "t.png"))
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("/loop/first") == 2 and "4 executions" in table.stdout
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    by_outdir = qflow_cli("report", str(tmp_path))  # the run's --outdir finds its report
    assert by_outdir.returncode == 0 and by_outdir.stdout == table.stdout
    bad_format = qflow_cli("report", str(report), "--plot", str(tmp_path / "t.nope"))
    assert bad_format.returncode == 2 and "--plot" in bad_format.stderr
    assert "Traceback" not in bad_format.stderr and not (tmp_path / "t.nope").exists()


def test_report_refuses_what_is_not_a_report(tmp_path: Path):
    proc = qflow_cli("report", str(_write(tmp_path / "x.json", '{\n  "a": 1\n}')))
    assert proc.returncode == 2 and "not a qflow run report" in proc.stderr
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\xd0\x00\xff")
    bad = [(binary, "not a text file"), (tmp_path, "no such file"), (DATA / "fail.cwl", ":1: not")]
    for path, says in bad:
        proc = qflow_cli("report", str(path))
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr
    proc = qflow_cli("report", str(binary), "--plot", str(tmp_path / "no" / "t.png"))
    assert proc.returncode == 2 and f"directory {tmp_path / 'no'} does not exist" in proc.stderr


def test_quiet_run_prints_only_the_output_object(tmp_path: Path):
    run = qflow_cli("run", "--quiet", "--outdir", str(tmp_path), str(DATA / "loop-counter.cwl"))
    assert run.returncode == 0
    assert json.loads(run.stdout) == {"o": 4}
    assert "[started]" not in run.stderr and "[ended]" not in run.stderr
    assert "qflow: success" not in run.stderr


def test_connectors_lists_builtins_with_their_keys():
    proc = qflow_cli("connectors")
    assert proc.returncode == 0
    assert "local (classical" in proc.stdout and "slots = 1" in proc.stdout


def test_timeline_stacks_workflows_on_one_time_axis():
    from qflow.reporting.timeline import timeline

    def report(started: float, steps: list[dict], allocations: list[dict]) -> dict:
        return {"started": started, "workflow": "w.cwl", "steps": steps,
                "allocations": allocations}  # fmt: skip

    first = report(100.0, [
        {"started": 100.0, "ended": 104.0, "nodes": 1, "node_seconds": 4.0},  # own job
        {"started": 101.0, "ended": 103.0, "nodes": 1, "node_seconds": 0.0},  # in allocation
        {"started": 104.0, "ended": 106.0, "quantum": True, "node_seconds": 0.0},
    ], [{"started": 101.0, "ended": 103.0, "nodes": 2}])  # fmt: skip
    second = report(102.0, [
        {"started": 102.0, "ended": 105.0, "quantum": True, "node_seconds": 0.0},
    ], [{"started": 102.0, "ended": 108.0, "nodes": 1}])  # fmt: skip
    data = timeline([first, second])
    assert data.times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]
    assert data.nodes[0] == [1, 3, 3, 1, 0, 0, 0, 0]  # 1 own + 2 allocated from 1 s to 3 s
    assert data.nodes[1] == [0, 0, 1, 1, 1, 1, 1, 0]  # its allocation, on the shared axis
    assert data.qpu[0] == [0, 0, 0, 0, 1, 1, 0, 0] and data.qpu[1] == [0, 0, 1, 1, 1, 0, 0, 0]


def test_report_of_several_runs_plots_them_together(tmp_path: Path):
    reports = []
    for name in ("a", "b"):
        run = qflow_cli("run", "--quiet", "--outdir", str(tmp_path / name),
                        str(DATA / "loop-counter.cwl"))  # fmt: skip
        assert run.returncode == 0, run.stderr
        reports.append(str(tmp_path / name / "qflow-report.json"))
    proc = qflow_cli("report", *reports, "--plot", str(tmp_path / "both.png"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("4 executions") == 2  # one table per run
    assert (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"
