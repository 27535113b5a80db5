"""Quantum locations end to end against real QPU service processes (emulator, gateway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import DATA, REPO, deployment_from, qflow_interruptible, run_in_process
from qflow.testing.qpu_services import emulator, emulator_stats, gateway_user_deployment, serve

QUBO = DATA / "mis5.qubo.json"
CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"
VENDOR_TOKEN = "vendor-secret-7f3a9c41d2"


@pytest.fixture
def vendor_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("QPU_TOKEN", VENDOR_TOKEN)
    return VENDOR_TOKEN


def _rest_deployment(url: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        version: 1
        locations:
          local: {{connector: local, slots: 3}}
          qpu:
            connector: rest
            url: {url}
            token: ${{env:QPU_TOKEN}}
            http_retries: 1
            backoff: 0.1
            max_wait: 30
            {extra}
        bindings:
          default: local
          /solve: [qpu, local]
        """
    )


def test_quantum_candidate_on_the_emulator_through_rest(tmp_path: Path, vendor_token: str):
    with emulator(vendor_token) as url:
        deployment = deployment_from(_rest_deployment(url))
        result, outputs = run_in_process(
            DATA / "qubo-solve.cwl", deployment, tmp_path, "--qubo", str(QUBO)
        )
        stats = emulator_stats(url, vendor_token)
    assert result.exit_code == 0
    (record,) = result.report["steps"]
    assert record["quantum"] and record["location"] == "qpu" and record["connector"] == "rest"
    assert record["qpu_seconds"] > 0 and record["nodes"] == 0 and not record["fallback"]
    assert [t["state"] for t in stats["tasks"]] == ["completed"]
    solution = json.loads(Path(outputs["solution"]["path"]).read_text())
    assert solution["solver"].startswith("emulator:") and solution["selected"] == [0, 2, 4]


def test_stopped_qpu_falls_back_to_simulated_annealing(tmp_path: Path, vendor_token: str):
    with emulator(vendor_token) as url:
        pass  # started and stopped: nothing listens there any more
    result, outputs = run_in_process(
        DATA / "qubo-solve.cwl", deployment_from(_rest_deployment(url)), tmp_path,
        "--qubo", str(QUBO),
    )  # fmt: skip
    assert result.exit_code == 0
    (record,) = result.report["steps"]
    assert record["fallback"] and record["location"] == "local" and not record["quantum"]
    assert "unreachable" in record["fallback_reason"]
    assert json.loads(Path(outputs["solution"]["path"]).read_text())["selected"] == [0, 2, 4]


def test_offline_qpu_falls_back(tmp_path: Path, vendor_token: str):
    with emulator(vendor_token, offline=True) as url:
        result, _ = run_in_process(
            DATA / "qubo-solve.cwl", deployment_from(_rest_deployment(url)), tmp_path,
            "--qubo", str(QUBO),
        )  # fmt: skip
    (record,) = result.report["steps"]
    assert result.exit_code == 0 and record["fallback"]
    assert "offline" in record["fallback_reason"]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    level = best = 0
    for _, delta in events:
        level += delta
        best = max(best, level)
    return best


@pytest.mark.parametrize("vqpus", [1, 2])
def test_two_clustering_workflows_share_one_qpu_through_a_gateway(tmp_path: Path, vqpus: int):
    token, admin = VENDOR_TOKEN, "gateway-admin-5b2e"
    env = {"QPU_TOKEN": token, "QFLOW_GATEWAY_ADMIN": admin}
    with emulator(token, time_scale=5) as qpu_url:  # each task ~1 s on the QPU
        site = tmp_path / "site.yml"
        site.write_text(_rest_deployment(qpu_url, f"vqpus: {vqpus}"))
        gateway_args = ["qflow.gateway", str(site), "--admin-token", "${env:QFLOW_GATEWAY_ADMIN}"]
        with serve(gateway_args, env, "qflow gateway listening on") as gateway_url:
            client_side = tmp_path / "user.yml"
            client_side.write_text(
                gateway_user_deployment(gateway_url, "/loop/annealing: [qpu, local]", 120)
            )
            runs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "qflow.cli",
                        "run",
                        "--quiet",
                        "--outdir",
                        str(tmp_path / f"run{i}"),
                        str(CLUSTERING),
                        str(client_side),
                        "--",
                        "--n_samples",
                        "800",
                        "--max_iterations",
                        "2",
                        "--threshold",
                        "0.99",
                    ],
                    cwd=REPO,
                    env={**os.environ, "QFLOW_GATEWAY_ADMIN": admin},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
                for i in range(2)
            ]
            for proc in runs:
                _, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, err[-2000:]
            stats = emulator_stats(qpu_url, token)
    quantum = [
        r
        for i in range(2)
        for r in json.loads((tmp_path / f"run{i}" / "qflow-report.json").read_text())["steps"]
        if r["step"] == "/loop/annealing"
    ]
    assert len(quantum) == 4 and all(r["quantum"] and not r["fallback"] for r in quantum)
    # never more steps holding the QPU than virtual QPUs
    overlap = _max_overlap([(r["started"], r["ended"]) for r in quantum])
    assert 1 <= overlap <= vqpus
    # every submitted task ran to completion exactly once, one at a time on the QPU
    tasks = stats["tasks"]
    assert len(tasks) == 4 and len({t["id"] for t in tasks}) == 4
    assert all(t["state"] == "completed" for t in tasks)
    ordered = sorted((t["started"], t["ended"]) for t in tasks)
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(ordered, ordered[1:], strict=False))
    span = stats["last_end"] - stats["first_start"]
    print(
        f"vqpus={vqpus}: {overlap} steps on the QPU at once at most; "
        f"QPU occupancy {stats['busy_seconds'] / span:.2f} over {span:.2f} s"
    )


def test_vendor_token_reaches_no_step_log_or_report(tmp_path: Path, vendor_token: str):
    env_dump = tmp_path / "step-env.txt"
    workflow = tmp_path / "printenv.cwl"
    workflow.write_text(
        textwrap.dedent(
            f"""
            cwlVersion: v1.2
            class: CommandLineTool
            baseCommand: [sh, -c, 'env > {env_dump}; env']
            inputs: []
            outputs: []
            """
        )
    )
    with emulator(vendor_token) as url:
        deployment = tmp_path / "d.yml"
        deployment.write_text(
            _rest_deployment(url).replace("/solve: [qpu, local]", "/printenv: qpu")
        )
        proc = subprocess.run(
            [sys.executable, "-m", "qflow.cli", "run", "--verbose", "--outdir",
             str(tmp_path / "out"), str(workflow), str(deployment)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
            env={**os.environ, "QPU_TOKEN": vendor_token},
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    step_env = env_dump.read_text()
    assert "QFLOW_QPU_TOKEN=" in step_env, "the step did run as a QPU client"
    report = (tmp_path / "out" / "qflow-report.json").read_text()
    for text in (step_env, proc.stdout, proc.stderr, report):
        assert vendor_token not in text


def test_known_secrets_are_redacted_from_logs_and_reports(tmp_path: Path, caplog):
    import logging

    from qflow.reporting.ledger import write_report
    from qflow.secrets import RedactingFilter, register_secret

    secret = "s3cr3t-value-for-redaction"
    register_secret(secret)
    logger = logging.getLogger("qflow.test-redaction")
    caplog.handler.addFilter(RedactingFilter())
    logger.warning("connecting with %s failed", secret)
    assert secret not in caplog.text and "***" in caplog.text
    write_report({"steps": [{"message": f"token {secret} refused"}]}, tmp_path / "r.json")
    assert secret not in (tmp_path / "r.json").read_text()


def _get(url: str, token: str) -> dict:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_interrupt_cancels_the_qpu_task_and_frees_the_slot(tmp_path: Path, vendor_token: str):
    import signal
    import time

    with emulator(vendor_token) as url:
        deployment = tmp_path / "d.yml"
        deployment.write_text(_rest_deployment(url, "backend: neutral-atom"))  # a 2-minute task
        proc = qflow_interruptible(
            "run", "--quiet", "--outdir", str(tmp_path / "o"), str(DATA / "qubo-solve.cwl"),
            str(deployment), "--", "--qubo", str(QUBO),
            env={**os.environ, "QPU_TOKEN": vendor_token},
        )  # fmt: skip
        try:
            deadline = time.time() + 60
            while _get(f"{url}/v1/status", vendor_token)["running"] == 0:
                assert proc.poll() is None and time.time() < deadline, proc.communicate()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        status = _get(f"{url}/v1/status", vendor_token)
        stats = emulator_stats(url, vendor_token)
    assert proc.returncode == 130, err
    assert status["running"] == 0 and status["pending"] == 0, "a QPU task was left behind"
    assert [t["state"] for t in stats["tasks"]] == ["cancelled"]
    report = json.loads((tmp_path / "o" / "qflow-report.json").read_text())
    assert report["status"] == "cancelled" and report["steps"][0]["status"] == "cancelled"
