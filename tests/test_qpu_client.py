"""qflow.qpu_client, the step side of the QPU gateway, against real processes.

The emulator (``qflow emulator``, its own process) has the API the gateway gives steps, and
misbehaves for real on request (``POST /v1/admin/faults``); one test goes through a site-wide
gateway with a real lease and its step token. Nothing is patched.
"""

from __future__ import annotations

import ast
import http.server
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import qflow.qpu_client
from conftest import DATA
from qflow.qpu_client import QpuClient, QpuClientError, QpuTaskFailed, QpuTimeout, solve_qubo
from qflow.testing.qpu_services import emulator, serve

TOKEN = "qpu-client-tests-5e1d"
ADMIN = "gateway-admin-qpu-client-90af"
MIS5 = json.loads((DATA / "mis5.qubo.json").read_text())  # a path of 5: best {0, 2, 4}
TASK = {"kind": "qubo", "qubo": MIS5["terms"], "num_variables": 5, "num_reads": 20, "seed": 1}
SLOW = {**TASK, "backend": "neutral-atom"}  # 120 s x time_scale 0.1: 12 s on the QPU


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


def set_faults(url: str, **fault: object) -> None:
    status, answer = call(url, "POST", "/v1/admin/faults", fault)
    assert status == 200, answer


def requests_seen(url: str) -> dict[str, int]:
    return call(url, "GET", "/v1/admin/faults")[1]["requests"]


def task_ids(url: str) -> set[str]:
    """Every task the QPU knows, in any state."""
    return {t["id"] for t in call(url, "GET", "/v1/tasks")[1]["tasks"]}


@pytest.fixture(scope="module")
def _emulator() -> Iterator[str]:
    with emulator(TOKEN, time_scale=0.1) as url:  # superconducting: 20 ms per task
        yield url


@pytest.fixture
def url(_emulator: str) -> Iterator[str]:
    set_faults(_emulator, mode="none")
    yield _emulator
    set_faults(_emulator, mode="none")
    call(_emulator, "POST", "/v1/admin/online")


def client(url: str, log: list[str] | None = None, **options: object) -> QpuClient:
    sink = (lambda line: None) if log is None else log.append
    return QpuClient(url, TOKEN, backoff=0.05, log=sink, **options)  # type: ignore[arg-type]


# -- the module itself ---------------------------------------------------------------------


def test_importing_the_client_pulls_in_the_standard_library_only() -> None:
    tree = ast.parse(Path(qflow.qpu_client.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names)
    probe = (  # what the import adds (site's .pth files may have loaded others before)
        "import sys; before = set(sys.modules); import qflow.qpu_client; "
        "print(sorted(m for m in set(sys.modules) - before "
        "if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['qflow', 'qflow.qpu_client']"


def test_from_env_needs_the_url_and_the_token(url: str) -> None:
    with pytest.raises(QpuClientError, match="QFLOW_QPU_URL and QFLOW_QPU_TOKEN are not set"):
        QpuClient.from_env({"QFLOW_QPU_URL": url})
    assert issubclass(QpuClientError, SystemExit)  # uncaught: a message, exit 1, no traceback
    env = {"QFLOW_QPU_URL": url + "/", "QFLOW_QPU_TOKEN": TOKEN}
    assert QpuClient.from_env(env).status()["online"] is True


# -- the protocol, working -------------------------------------------------------------------


def test_a_qubo_task_from_submission_to_result(url: str) -> None:
    qpu = client(url)
    result = solve_qubo(qpu, MIS5["terms"], 5, num_reads=20, num_sweeps=200, seed=3)
    assert result["best_sample"] == [1, 0, 1, 0, 1]
    assert result["best_energy"] == pytest.approx(-2.4)
    assert result["solver"].startswith("emulator:")
    task_id = qpu.submit(TASK)
    final = qpu.wait(task_id)
    assert final["state"] == "completed" and final["qpu_seconds"] > 0
    assert qpu.result(task_id)["best_sample"] == [1, 0, 1, 0, 1]
    assert "completed" in qpu.logs(task_id)
    assert qpu.cancel(task_id)["state"] == "completed"  # an ended task stays as it is


def test_the_same_idempotency_key_gives_the_same_task(url: str) -> None:
    qpu = client(url)
    first = qpu.submit(TASK, key="step-7-annealing")
    assert qpu.submit(TASK, key="step-7-annealing") == first
    assert qpu.submit(TASK) != first  # no key: a fresh one, a new task
    status, found = call(url, "GET", "/v1/tasks?idempotency_key=step-7-annealing")
    assert status == 200 and [t["id"] for t in found["tasks"]] == [first]
    with pytest.raises(QpuClientError, match="answered 422") as refused:
        qpu.submit({**TASK, "seed": 2}, key="step-7-annealing")  # same key, another task
    assert refused.value.status == 422


@pytest.mark.parametrize("mode", ["reset", "hang"])
def test_a_lost_submission_is_retried_with_its_key_and_runs_once(url: str, mode: str) -> None:
    # after=True: the QPU creates the task, then the answer is lost (reset) or never comes
    # (hang: the client's request timeout fires); only the key keeps a second task away
    set_faults(url, mode=mode, count=1, method="POST", paths="/v1/tasks", after=True)
    before, posts = task_ids(url), requests_seen(url).get("POST /v1/tasks", 0)
    log: list[str] = []
    result = client(url, log, request_timeout=1.0).run(TASK)
    assert result["best_sample"] == [1, 0, 1, 0, 1]
    assert requests_seen(url)["POST /v1/tasks"] - posts == 2
    assert len(task_ids(url) - before) == 1  # submitted twice, one task
    assert len(log) == 1 and log[0].endswith("retrying in 0.05 s"), log


def test_503_is_retried_with_bounded_backoff_then_reported(url: str) -> None:
    call(url, "POST", "/v1/admin/offline")  # the QPU answers 503 to submissions
    log: list[str] = []
    begin = time.monotonic()
    with pytest.raises(QpuClientError) as failed:
        client(url, log, attempts=3).submit(TASK)
    elapsed = time.monotonic() - begin
    assert failed.value.status == 503
    assert "the QPU gateway answered 503 after 3 attempts" in str(failed.value)
    assert [line.rsplit(" ", 3)[1:] for line in log] == [["in", "0.05", "s"], ["in", "0.1", "s"]]
    assert elapsed >= 0.15 * 0.9  # the two back-offs were slept


@pytest.mark.parametrize(
    ("fault", "status", "problem"),
    [
        ({"mode": "http500", "count": 1}, 500, "answered 500: injected fault"),
        ({"mode": "malformed"}, None, "the QPU gateway's answer is not JSON"),
        ({"mode": "wrong_shape"}, None, "the submitted task has no valid 'id'"),
    ],
    ids=["500", "malformed", "wrong-shape"],
)
def test_what_cannot_be_retried_is_reported_at_once(
    url: str, fault: dict, status: int | None, problem: str
) -> None:
    set_faults(url, method="POST", paths="/v1/tasks", **fault)
    before = requests_seen(url).get("POST /v1/tasks", 0)
    log: list[str] = []
    with pytest.raises(QpuClientError, match=re.escape(problem)) as failed:
        client(url, log).submit(TASK)
    assert failed.value.status == status
    assert requests_seen(url)["POST /v1/tasks"] - before == 1 and log == []


def test_a_task_the_qpu_refuses_is_reported_with_its_reason(url: str) -> None:
    with pytest.raises(QpuClientError, match="answered 400: .*out of range for num_variables=5"):
        solve_qubo(client(url), [*MIS5["terms"], [7, 7, -1.0]], 5)


def test_an_unreachable_gateway_is_reported_after_the_attempts() -> None:
    log: list[str] = []
    with pytest.raises(QpuClientError, match="unreachable after 3 attempt") as failed:
        client("http://127.0.0.1:9", log, attempts=3).status()
    assert failed.value.status is None and len(log) == 2


def test_a_wrong_token_is_refused(url: str) -> None:
    with pytest.raises(QpuClientError, match="answered 401") as failed:
        QpuClient(url, "not-the-token", log=lambda line: None).status()
    assert failed.value.status == 401


# -- timeouts and tasks that do not complete -------------------------------------------------


def test_the_timeout_cancels_the_task_and_says_so(url: str) -> None:
    before = task_ids(url)
    with pytest.raises(QpuTimeout, match=r"is still (queued|running) after the timeout of 0.5 s"):
        client(url, timeout=0.5).run(SLOW)
    (new,) = task_ids(url) - before
    assert call(url, "GET", f"/v1/tasks/{new}")[1]["state"] == "cancelled"


def test_the_timeout_also_bounds_the_retries() -> None:
    with pytest.raises(QpuTimeout, match="out of time"):  # not after all its back-offs
        QpuClient("http://127.0.0.1:9", TOKEN, timeout=0.3, backoff=1).status()


def test_a_task_that_ends_cancelled_is_a_failure_with_its_reason(url: str) -> None:
    qpu = client(url)
    task_id = qpu.submit(SLOW, key="cancelled-elsewhere")
    qpu.cancel(task_id)
    with pytest.raises(QpuTaskFailed, match=f"task {task_id} cancelled: cancelled while") as e:
        qpu.run(SLOW, key="cancelled-elsewhere")  # the same key: the same, cancelled task
    assert e.value.task["state"] == "cancelled"


# -- redirects: the token never goes elsewhere ------------------------------------------------


@contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_is_not_followed() -> None:
    seen: list[str | None] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Elsewhere) as elsewhere:

        class Redirects(Elsewhere):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(302)
                self.send_header("Location", elsewhere + "/v1/status")
                self.end_headers()

        with http_server(Redirects) as url, pytest.raises(QpuClientError, match="answered 302"):
            client(url).status()
    assert seen == []


# -- through a site-wide gateway: a lease's step token ---------------------------------------


def test_through_the_gateway_with_a_step_token(url: str, tmp_path: Path) -> None:
    site = tmp_path / "site.yml"
    site.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            locations:
              qpu: {{connector: rest, url: "{url}", token: "${{env:QPU_TOKEN}}", vqpus: 1}}
            """
        )
    )
    args = ["qflow.gateway", str(site), "--admin-token", "${env:QFLOW_GATEWAY_ADMIN}"]
    env = {"QPU_TOKEN": TOKEN, "QFLOW_GATEWAY_ADMIN": ADMIN}
    with serve(args, env, "qflow gateway listening on") as gateway:
        status, lease = call(gateway, "POST", "/v1/leases", {"location": "qpu"}, ADMIN)
        assert status == 201, lease
        qpu = QpuClient(gateway, lease["token"], log=lambda line: None)
        before = task_ids(url)
        first = qpu.submit(TASK, key="retried")
        assert qpu.submit(TASK, key="retried") == first  # a retried submission: one task
        assert qpu.wait(first)["state"] == "completed"
        assert qpu.result(first)["best_sample"] == [1, 0, 1, 0, 1]
        assert len(task_ids(url) - before) == 1
        assert qpu.status()["online"] is True
        # the gateway refuses what the QPU cannot take, before the QPU is asked (400: final)
        posts = requests_seen(url)["POST /v1/tasks"]
        with pytest.raises(QpuClientError, match="400: .*no task of kind 'sampler'.*qubo"):
            qpu.submit({"kind": "sampler", "circuits": []})
        with pytest.raises(QpuClientError, match="400: .*index j=9 is out of range"):
            qpu.submit({**TASK, "qubo": [[0, 9, 1.0]]})
        assert requests_seen(url)["POST /v1/tasks"] == posts
        # the step token reaches its own tasks and the status, nothing of the orchestrator's
        with pytest.raises(QpuClientError, match="answered 401"):
            qpu._call("GET", "/v1/locations/qpu")
        # released: the token dies with the lease
        assert call(gateway, "DELETE", f"/v1/leases/{lease['lease']}", token=ADMIN)[0] == 200
        with pytest.raises(QpuClientError, match="answered 401: unknown or expired step token"):
            qpu.task(first)
