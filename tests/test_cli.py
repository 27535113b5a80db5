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


def test_report_refuses_what_is_not_a_report(tmp_path: Path):
    proc = qflow_cli("report", str(_write(tmp_path / "x.json", '{\n  "a": 1\n}')))
    assert proc.returncode == 2 and "not a qflow run report" in proc.stderr


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
