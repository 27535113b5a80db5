"""A QPU service that misbehaves for real: the emulator's fault injection, end to end.

The emulator runs as its own process and is told to answer 500s, hang, reset connections,
send malformed bodies or die while a task runs (``POST /v1/admin/faults``); workflows run
through ``qflow run`` (in-process, the same path as the CLI) with the ``rest`` connector and
the QPU gateway. Nothing is patched: the requests really fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import DATA, REPO, deployment_from, run_in_process
from qflow.testing.qpu_services import emulator_stats, gateway_user_deployment, serve

QUBO = DATA / "mis5.qubo.json"
TOKEN = "vendor-faults-3c81e0"
ADMIN = "gateway-admin-faults-77d1"
CLAGG = REPO / "workflows" / "clustering-aggregation" / "clagg.py"


@pytest.fixture(autouse=True)
def _tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QPU_TOKEN", TOKEN)
    monkeypatch.setenv("QFLOW_GATEWAY_ADMIN", ADMIN)


@contextmanager
def emulator(time_scale: float = 0.5, port: int = 0, *fault_args: str) -> Iterator[str]:
    args = ["qflow.emulator", "--port", str(port), "--time-scale", str(time_scale), *fault_args]
    with serve(args, {"QFLOW_EMULATOR_TOKEN": TOKEN}, "qflow emulator listening on") as url:
        yield url


def call(url: str, method: str, path: str, body: dict | None = None, token: str = TOKEN):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def set_faults(url: str, **fault) -> None:
    status, answer = call(url, "POST", "/v1/admin/faults", fault)
    assert status == 200, answer


class Qpu:
    """One emulator process for the module; each test sees only what happened since it began.

    Admin paths are never faulted, so a test can always turn faults off and read counters.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.begin = 0.0
        self._tasks: set[str] = set()
        self._requests: dict[str, int] = {}

    def fresh(self) -> Qpu:
        set_faults(self.url, mode="none")  # also lets go of requests a "hang" still holds
        self._tasks = {t["id"] for t in emulator_stats(self.url, TOKEN)["tasks"]}
        self._requests = self._seen()["requests"]
        self.begin = time.time()
        return self

    def _seen(self) -> dict:
        return call(self.url, "GET", "/v1/admin/faults")[1]

    def requests(self) -> dict[str, int]:
        """Requests since the test began, per route (admin ones left out)."""
        now = self._seen()["requests"]
        counts = {k: n - self._requests.get(k, 0) for k, n in now.items() if "/admin/" not in k}
        return {k: n for k, n in counts.items() if n}

    def post_times(self) -> list[float]:
        log = self._seen()["log"]
        return [
            e["time"] for e in log if e["route"] == "POST /v1/tasks" and e["time"] >= self.begin
        ]

    def new_tasks(self) -> list[dict]:
        """Tasks the QPU executed since the test began (faults off first: /v1/stats is not
        an admin path)."""
        set_faults(self.url, mode="none")
        return [t for t in emulator_stats(self.url, TOKEN)["tasks"] if t["id"] not in self._tasks]


@pytest.fixture(scope="module")
def _shared_qpu() -> Iterator[Qpu]:
    with emulator() as url:
        yield Qpu(url)


@pytest.fixture
def qpu(_shared_qpu: Qpu) -> Qpu:
    return _shared_qpu.fresh()


def rest_deployment(url: str, *, timeout=1.0, http_retries=1, backoff=0.05, classical=True):
    return deployment_from(
        f"""
        version: 1
        locations:
          local: {{connector: local, slots: 2}}
          qpu:
            connector: rest
            url: {url}
            token: ${{env:QPU_TOKEN}}
            timeout: {timeout}
            http_retries: {http_retries}
            backoff: {backoff}
            max_wait: 10
        bindings:
          default: local
          /solve: {"[qpu, local]" if classical else "qpu"}
        """
    )


def solve(deployment, tmp_path: Path, qubo: Path = QUBO) -> tuple[dict, int]:
    """Run tests/data/qubo-solve.cwl; its report and exit code."""
    result, _ = run_in_process(DATA / "qubo-solve.cwl", deployment, tmp_path, "--qubo", str(qubo))
    return result.report, result.exit_code


# --- transient faults: retried, the step stays on the QPU, the task runs once ---------------


@pytest.mark.parametrize(
    ("mode", "count"),
    [("http500", 2), ("reset", 1)],
    ids=["two-500s-on-submit", "reset-on-submit"],
)
def test_transient_faults_on_submit_are_retried_and_the_task_runs_once(
    tmp_path: Path, qpu: Qpu, mode: str, count: int
):
    backoff = 0.2
    # after=True: the emulator creates the task, THEN loses the answer, so only the
    # Idempotency-Key of the retries keeps a second task from being created
    set_faults(qpu.url, mode=mode, count=count, method="POST", paths="/v1/tasks", after=True)
    report, code = solve(rest_deployment(qpu.url, http_retries=3, backoff=backoff), tmp_path)
    assert code == 0
    (record,) = report["steps"]
    assert record["quantum"] and record["location"] == "qpu" and not record["fallback"]
    assert record["status"] == "success"
    posts = qpu.post_times()
    assert len(posts) == count + 1, "each faulted submission was retried once more"
    gaps = [b - a for a, b in zip(posts, posts[1:], strict=False)]
    assert all(gap >= backoff * 2**i * 0.9 for i, gap in enumerate(gaps)), gaps  # 0.2, 0.4 s
    (task,) = qpu.new_tasks()  # exactly one task although it was submitted count + 1 times
    assert task["state"] == "completed"


# --- persistent faults: fall back to the classical implementation, in bounded time ----------


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("http500", "HTTP 500 (after 2 attempts): injected fault"),
        ("hang", "no answer within the timeout of 1 s"),
        ("malformed", "the answer is not JSON"),
        ("wrong_shape", "the answer is not a JSON object"),
        ("reset", "Connection reset"),
    ],
)
def test_a_persistently_failing_qpu_is_refused_and_the_step_falls_back(
    tmp_path: Path, qpu: Qpu, mode: str, problem: str
):
    set_faults(qpu.url, mode=mode)
    report, code = solve(rest_deployment(qpu.url), tmp_path)
    assert code == 0
    (record,) = report["steps"]
    assert record["fallback"] and not record["quantum"] and record["location"] == "local"
    assert problem in record["fallback_reason"]
    assert "Traceback" not in record["fallback_reason"]
    # the lease's status check: 1 + http_retries attempts (each at most `timeout`: 1 s); an
    # answer that is not what the API promises is not retried; aiohttp itself resends a GET
    # once when its connection was reset (RFC 9112 9.3.1: idempotent request)
    attempts = {"malformed": 1, "wrong_shape": 1, "reset": 2 * 2}.get(mode, 2)
    assert qpu.requests() == {"GET /v1/status": attempts}
    assert qpu.new_tasks() == []


@pytest.mark.parametrize(
    ("mode", "problem", "posts"),
    [
        ("http500", "HTTP 500 (after 2 attempts)", 2),
        ("hang", "no answer within the timeout of 1 s", 2),
        ("malformed", "the answer is not JSON", 1),
    ],
)
def test_a_qpu_failing_the_steps_submission_makes_the_step_fall_back(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    qpu: Qpu,
    mode: str,
    problem: str,
    posts: int,
):
    set_faults(qpu.url, mode=mode, method="POST", paths="/v1/tasks")  # the lease works
    report, code = solve(rest_deployment(qpu.url), tmp_path)
    assert code == 0
    failed, fallback = report["steps"]
    assert failed["quantum"] and failed["status"] == "failed"
    assert fallback["fallback"] and fallback["location"] == "local"
    assert fallback["status"] == "success"
    assert "quantum execution on qpu failed" in fallback["fallback_reason"]
    # the step's client says what went wrong, relayed by the gateway (no traceback)
    err = capfd.readouterr().err
    assert "the QPU gateway answered 502" in err and problem in err
    assert "Traceback" not in err
    # retried by the connector only (http_retries: 1), not once more by the client
    assert qpu.requests()["POST /v1/tasks"] == posts
    assert qpu.new_tasks() == []


def test_a_task_no_qpu_can_take_is_refused_once_before_the_qpu(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], qpu: Qpu
):
    bad = tmp_path / "bad.qubo.json"  # a term on variable 7 of 5: the gateway answers 400
    qubo = json.loads(QUBO.read_text())
    qubo["terms"].append([7, 7, -1.0])
    bad.write_text(json.dumps(qubo))
    report, code = solve(rest_deployment(qpu.url, http_retries=3), tmp_path, bad)
    assert code == 0
    failed, fallback = report["steps"]
    assert failed["quantum"] and failed["status"] == "failed" and fallback["fallback"]
    err = capfd.readouterr().err
    assert "the QPU gateway answered 400" in err and "out of range for num_variables=5" in err
    assert "POST /v1/tasks" not in qpu.requests(), "the gateway checks the QUBO, not the QPU"
    assert err.count("the QPU gateway answered 400") == 1, "a 400 is neither retried nor resent"
    assert qpu.new_tasks() == []


# --- the QPU dies while a task runs -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def site_gateway(tmp_path: Path, qpu_url: str) -> Iterator[str]:
    site = tmp_path / "site.yml"
    site.write_text(
        textwrap.dedent(
            f"""
            version: 1
            locations:
              qpu:
                connector: rest
                url: {qpu_url}
                token: ${{env:QPU_TOKEN}}
                timeout: 1
                http_retries: 1
                backoff: 0.05
                vqpus: 1
            """
        )
    )
    args = ["qflow.gateway", str(site), "--admin-token", "${env:QFLOW_GATEWAY_ADMIN}"]
    env = {"QPU_TOKEN": TOKEN, "QFLOW_GATEWAY_ADMIN": ADMIN}
    with serve(args, env, "qflow gateway listening on") as url:
        yield url


def shared_deployment(gateway_url: str, max_wait: float, classical: bool):
    solve = "[qpu, local]" if classical else "qpu"
    return deployment_from(gateway_user_deployment(gateway_url, f"/solve: {solve}", max_wait))


@pytest.mark.parametrize("classical", [True, False], ids=["falls-back", "no-classical-candidate"])
def test_the_qpu_dying_mid_task_leaves_no_lease_behind(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], classical: bool
):
    port = free_port()
    qpu_url = f"http://127.0.0.1:{port}"
    with site_gateway(tmp_path, qpu_url) as gateway_url:
        # the task takes 0.5 s on the QPU; the emulator exits (--faults) 0.25 s into it
        with emulator(2.5, port, "--faults", "die_mid_task"):
            deployment = shared_deployment(gateway_url, 10, classical)
            report, code = solve(deployment, tmp_path / "first")
        err = capfd.readouterr().err
        quantum = report["steps"][0]
        assert quantum["quantum"] and quantum["status"] == "failed"
        # the client's message relays the gateway's: the QPU cannot be reached any more
        assert "the QPU gateway answered 502: QpuUnreachable" in err, err[-3000:]
        if classical:
            assert code == 0 and len(report["steps"]) == 2
            assert report["steps"][1]["fallback"] and report["steps"][1]["status"] == "success"
        else:
            assert code != 0 and len(report["steps"]) == 1
        # the gateway released the lease although the QPU could not stop the task
        _, gateway = call(gateway_url, "GET", "/v1/stats", token=ADMIN)
        assert gateway["locations"]["qpu"] == {
            "vqpus": 1, "free": 1, "held": 0, "most_held": 1, "granted": 1, "refused": 0
        }  # fmt: skip
        # the QPU comes back at the same address: the next step gets it at once (max_wait 0)
        with emulator(0.5, port) as url:
            report, code = solve(shared_deployment(gateway_url, 0, classical), tmp_path / "2")
            stats = emulator_stats(url, TOKEN)
        assert code == 0
        (record,) = report["steps"]
        assert record["quantum"] and not record["fallback"]
        assert [t["state"] for t in stats["tasks"]] == ["completed"]
        # a request the gateway cannot parse is a clear 400, not a traceback
        status, answer = call(gateway_url, "POST", "/v1/leases", token=ADMIN)
        assert status == 400 and answer == {"error": "the request body is not valid JSON"}


# --- the step's client (clagg.py solve-qpu) against a misbehaving service ---------------------


def client(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``clagg.py solve-qpu`` talking to the emulator directly (same API as the gateway)."""
    return subprocess.run(
        [sys.executable, str(CLAGG), "solve-qpu", "--qubo", str(QUBO),
         "--output", str(tmp_path / "solution.json"), *args],
        env={**os.environ, "QFLOW_QPU_URL": url, "QFLOW_QPU_TOKEN": TOKEN},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_client_retries_a_lost_submission_with_the_same_key(tmp_path: Path, qpu: Qpu):
    set_faults(qpu.url, mode="reset", count=1, method="POST", paths="/v1/tasks", after=True)
    proc = client(qpu.url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "retrying in 0.2 s" in proc.stderr
    assert qpu.requests()["POST /v1/tasks"] == 2
    assert [t["state"] for t in qpu.new_tasks()] == ["completed"]
    assert json.loads((tmp_path / "solution.json").read_text())["selected"] == [0, 2, 4]


def test_the_client_reports_a_malformed_answer_without_a_traceback(tmp_path: Path, qpu: Qpu):
    set_faults(qpu.url, mode="malformed", method="GET", paths="/v1/tasks/")
    proc = client(qpu.url, tmp_path)
    assert proc.returncode == 1
    assert "the QPU gateway's answer is not JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_client_gives_up_and_cancels_its_task_after_its_timeout(tmp_path: Path):
    with emulator(20) as url:  # 4 s of latency per task
        proc = client(url, tmp_path, "--timeout", "1")
        stats = emulator_stats(url, TOKEN)
    assert proc.returncode == 1 and "after the timeout of 1 s; cancelled it" in proc.stderr
    assert [t["state"] for t in stats["tasks"]] == ["cancelled"]  # not waited for: 4 s
