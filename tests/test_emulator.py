"""The QPU service emulator over real HTTP on 127.0.0.1, and the ``rest`` connector against it.

Ordering claims are checked on the emulator's own /v1/stats intervals, never on wall-clock
comparisons in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from qflow.connectors.rest import (
    QpuAuthError,
    QpuOffline,
    QpuRequestError,
    QpuUnreachable,
    RestQpuConnector,
    ResultNotReady,
)
from qflow.deployment import DeploymentError, parse_deployment, reference_markdown
from qflow.emulator.http import emulator_of, start_emulator, stop_emulator
from qflow.emulator.qpu import QpuEmulator
from qflow.quantum import QuantumLocationConfig

pytestmark = pytest.mark.timeout(60)

TOKEN = "emu-test-token-6f1c2a"
FINAL = ("completed", "failed", "cancelled")
TOKEN_ENV = "QFLOW_TEST_QPU_TOKEN"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "emulator.md"

# Maximum independent set of a star (centre 0, leaves 1-3): the leaves, energy -3, unique.
# Variable 4 is in no edge and costs +1, so it must be 0.
STAR_MIS = {
    "kind": "qubo",
    "num_variables": 5,
    "qubo": [[0, 0, -1], [1, 1, -1], [2, 2, -1], [3, 3, -1], [4, 4, 1]]
    + [[0, 1, 2], [0, 2, 2], [3, 0, 2]],
    "num_reads": 20,
    "num_sweeps": 200,
    "seed": 7,
}


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop, with a deadline."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))

    return run


class Api:
    """A bare HTTP client of the emulator (what any client sees)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
        raw: str | None = None,
    ) -> tuple[int, Any]:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, f"{self.url}/v1{path}", json=body, data=raw, headers=sent
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def submit(self, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": key} if key else None
        status, task = await self.call("POST", "/tasks", body, headers=headers)
        assert status in (200, 201), task
        return task

    async def wait(self, task_id: str, *states: str) -> dict[str, Any]:
        for _ in range(500):
            status, task = await self.call("GET", f"/tasks/{task_id}")
            assert status == 200, task
            if task["state"] in states:
                return task
            await asyncio.sleep(0.01)
        raise AssertionError(f"task {task_id} never reached {states}: {task}")


@contextlib.asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[tuple[Api, QpuEmulator]]:
    runner, url = await start_emulator(TOKEN, **options)
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, url), emulator_of(runner)
    finally:
        await stop_emulator(runner)


def long_task(seed: int = 0) -> dict[str, Any]:
    """A task that sits in its latency wait (neutral-atom at time_scale 0.1: 12 s)."""
    return {**STAR_MIS, "backend": "neutral-atom", "seed": seed}


def short_task(seed: int = 0) -> dict[str, Any]:
    return {**STAR_MIS, "backend": "superconducting", "seed": seed}


# --- the emulator's API -----------------------------------------------------------------------


@aio
async def test_every_endpoint_requires_the_bearer_token() -> None:
    async with emulator(time_scale=0) as (api, _):
        task = await api.submit(short_task())
        for method, path in [
            ("GET", "/status"),
            ("GET", "/stats"),
            ("POST", "/tasks"),
            ("GET", f"/tasks/{task['id']}"),
            ("GET", f"/tasks/{task['id']}/result"),
            ("POST", f"/tasks/{task['id']}/cancel"),
            ("GET", f"/tasks/{task['id']}/logs"),
            ("POST", "/admin/offline"),
            ("GET", "/no-such-endpoint"),
        ]:
            for token in (None, "wrong", TOKEN + "x", ""):
                status, body = await api.call(method, path, short_task(), token=token)
                assert status == 401, (method, path, token)
                assert body["code"] == "unauthorized" and "bearer token" in body["error"]
        status, body = await api.call("GET", "/status")
        assert status == 200 and body["online"] is True  # the offline POST above was refused
        status, body = await api.call("GET", "/no-such-endpoint")
        assert status == 404 and body["code"] == "not_found"


BAD_BODIES = [
    ({**STAR_MIS, "kind": "circuit"}, "unknown task kind 'circuit' (supported: qubo)"),
    ({k: v for k, v in STAR_MIS.items() if k != "kind"}, "unknown task kind None"),
    ({**STAR_MIS, "qubo": {"0": 1}}, "qubo must be a list of [i, j, value] terms"),
    ({**STAR_MIS, "qubo": [[0, 1]]}, "qubo[0] must be a list [i, j, value]"),
    ({**STAR_MIS, "qubo": [[0, 0, -1], [0, 5, 1]]}, "qubo[1]: index j=5 is out of range"),
    ({**STAR_MIS, "qubo": [[-1, 0, 1]]}, "qubo[0]: index i=-1 is out of range"),
    ({**STAR_MIS, "qubo": [[0.5, 0, 1]]}, "qubo[0]: index i must be an integer"),
    ({**STAR_MIS, "qubo": [[0, 0, "x"]]}, "qubo[0]: value must be a finite number"),
    ({**STAR_MIS, "qubo": [[0, 0, True]]}, "qubo[0]: value must be a finite number"),
    ({k: v for k, v in STAR_MIS.items() if k != "num_variables"}, "num_variables is required"),
    ({**STAR_MIS, "num_variables": 0}, "num_variables must be an integer from 1"),
    ({**STAR_MIS, "num_reads": "many"}, "num_reads must be an integer from 1"),
    ({**STAR_MIS, "seed": -3}, "seed must be an integer from 0"),
    ({**STAR_MIS, "shots": 10}, "unknown field(s) for kind 'qubo': shots"),
    ({**STAR_MIS, "backend": "trapped-ion"}, "unknown backend 'trapped-ion'"),
    ({k: v for k, v in STAR_MIS.items() if k != "qubo"}, "qubo is required"),
]


@aio
async def test_bad_task_bodies_are_refused_with_a_clear_message() -> None:
    async with emulator(time_scale=0) as (api, qpu):
        for body, message in BAD_BODIES:
            status, answer = await api.call("POST", "/tasks", body)
            assert status == 400, (body, answer)
            assert message in answer["error"], answer
        status, answer = await api.call("POST", "/tasks", raw="{not json")
        assert (status, answer["code"]) == (400, "bad_json")
        status, answer = await api.call("POST", "/tasks", [STAR_MIS])
        assert status == 400 and "JSON object" in answer["error"]
        assert qpu.tasks == {}
        status, answer = await api.call("GET", "/tasks/nope")
        assert status == 404 and "nope" in answer["error"]


@aio
async def test_qubo_task_finds_the_unique_optimum() -> None:
    async with emulator(time_scale=0.05) as (api, _):
        task = await api.submit(STAR_MIS)
        assert task["state"] == "queued" and task["kind"] == "qubo"
        assert task["backend"] == "superconducting"  # the service default
        status, early = await api.call("GET", f"/tasks/{task['id']}/result")
        done = await api.wait(task["id"], "completed", "failed")
        status, result = await api.call("GET", f"/tasks/{task['id']}/result")
    assert done["state"] == "completed", done
    assert done["qpu_seconds"] == pytest.approx(done["ended"] - done["started"])
    assert done["queue_position"] is None and done["message"] == "best energy -3"
    assert status == 200
    assert result == {
        "kind": "qubo",
        "best_sample": [0, 1, 1, 1, 0],
        "best_energy": -3.0,
        "num_reads": 20,
        "solver": "emulator:superconducting/simulated-annealing",
    }


@aio
async def test_result_before_completion_is_409_and_logs_tell_the_story() -> None:
    async with emulator(time_scale=0.1) as (api, _):
        task = await api.submit(long_task())
        status, answer = await api.call("GET", f"/tasks/{task['id']}/result")
        assert status == 409 and answer["code"] == "not_completed"
        assert answer["state"] in ("queued", "running")
        await api.wait(task["id"], "running")
        short = await api.submit(short_task())
        await api.call("POST", f"/tasks/{task['id']}/cancel")
        await api.wait(short["id"], "completed")
        _, logs = await api.call("GET", f"/tasks/{short['id']}/logs")
        _, cancelled_logs = await api.call("GET", f"/tasks/{task['id']}/logs")
    lines = logs.splitlines()
    assert [line.split(" ", 1)[1].split(":")[0].split(" ")[0] for line in lines] == [
        "queued",
        "started",
        "completed",
    ]
    assert "position 1" in lines[0] and lines[-1].endswith("best energy -3")
    assert cancelled_logs.splitlines()[-1].endswith("cancelled: cancelled while running")


@aio
async def test_one_task_at_a_time_in_submission_order() -> None:
    async with emulator(time_scale=1.0) as (api, _):  # superconducting: 0.2 s per task
        ids = [(await api.submit(short_task(seed)))["id"] for seed in range(5)]
        running_seen = set()
        for task_id in ids:
            _, status = await api.call("GET", "/status")
            running_seen.add(status["running"])
            assert status["capacity"] == 1
            await api.wait(task_id, "completed")
        _, stats = await api.call("GET", "/stats")
        _, status = await api.call("GET", "/status")
    assert running_seen <= {0, 1}
    assert [t["id"] for t in stats["tasks"]] == ids
    runs = stats["tasks"]
    for before, after in zip(runs, runs[1:], strict=False):
        assert before["ended"] <= after["started"], (before, after)
    for run in runs:
        assert run["state"] == "completed" and run["started"] < run["ended"]
    assert stats["first_start"] == runs[0]["started"] and stats["last_end"] == runs[-1]["ended"]
    assert stats["busy_seconds"] == pytest.approx(sum(t["ended"] - t["started"] for t in runs))
    assert stats["busy_seconds"] <= stats["last_end"] - stats["first_start"]
    assert status["tasks_completed"] == 5 and status["pending"] == 0


@aio
async def test_tasks_read_and_cancelled_at_any_moment_stay_consistent() -> None:
    async with emulator(time_scale=0) as (api, _):
        tasks = [await api.submit({**short_task(seed), "num_reads": 2}) for seed in range(30)]
        answers: list[tuple[int, Any]] = []
        cancels: list[tuple[int, Any]] = []

        async def watch(task_id: str, cancel: bool) -> None:
            while True:
                if cancel:
                    cancels.append(await api.call("POST", f"/tasks/{task_id}/cancel"))
                answers.append(await api.call("GET", f"/tasks/{task_id}"))
                if answers[-1][0] != 200 or answers[-1][1]["state"] in FINAL:
                    return

        await asyncio.gather(*(watch(t["id"], i % 3 == 1) for i, t in enumerate(tasks)))
        _, stats = await api.call("GET", "/stats")
    everything = answers + cancels
    assert {status for status, _ in everything} == {200}, [a for a in everything if a[0] != 200]
    # a cancel answers with the task's final state (cancelled, or completed if it was too late)
    assert {body["state"] for _, body in cancels} <= {"cancelled", "completed"}
    finals = {body["id"]: body["state"] for _, body in answers if body["state"] in FINAL}
    assert {finals[t["id"]] for i, t in enumerate(tasks) if i % 3 != 1} == {"completed"}
    runs = stats["tasks"]
    for before, after in zip(runs, runs[1:], strict=False):
        assert before["ended"] <= after["started"]


@aio
async def test_idempotency_key_gives_one_task() -> None:
    async with emulator(time_scale=0) as (api, qpu):
        headers = {"Idempotency-Key": "step-3-try-1"}
        first_status, first = await api.call("POST", "/tasks", STAR_MIS, headers=headers)
        again_status, again = await api.call("POST", "/tasks", STAR_MIS, headers=headers)
        other_status, other = await api.call(
            "POST", "/tasks", {**STAR_MIS, "seed": 8}, headers=headers
        )
        fresh = await api.submit(STAR_MIS, key="step-3-try-2")
        await api.wait(fresh["id"], "completed")
    assert (first_status, again_status) == (201, 200)
    assert again["id"] == first["id"]
    assert other_status == 422 and other["code"] == "idempotency_conflict"
    assert fresh["id"] != first["id"]
    assert len(qpu.tasks) == 2


@aio
async def test_cancel_queued_and_running_tasks() -> None:
    async with emulator(time_scale=0.1) as (api, _):
        running = await api.submit(long_task(1))
        queued = await api.submit(long_task(2))
        await api.wait(running["id"], "running")
        status, cancelled = await api.call("POST", f"/tasks/{queued['id']}/cancel")
        assert status == 200 and cancelled["state"] == "cancelled"
        assert cancelled["started"] is None and cancelled["queue_position"] is None
        _, qpu_status = await api.call("GET", "/status")
        assert (qpu_status["running"], qpu_status["pending"]) == (1, 0)

        status, stopped = await api.call("POST", f"/tasks/{running['id']}/cancel")
        assert status == 200 and stopped["state"] == "cancelled"
        assert stopped["message"] == "cancelled while running"
        assert stopped["qpu_seconds"] == pytest.approx(stopped["ended"] - stopped["started"])
        status, again = await api.call("POST", f"/tasks/{running['id']}/cancel")
        assert status == 200 and again == stopped  # idempotent
        status, _ = await api.call("GET", f"/tasks/{running['id']}/result")
        assert status == 409

        after = await api.submit(short_task())  # the QPU is free again at once
        await api.wait(after["id"], "completed")
        status, done = await api.call("POST", f"/tasks/{after['id']}/cancel")
        assert done["state"] == "completed"  # cancelling an ended task changes nothing
        _, stats = await api.call("GET", "/stats")
    assert [(t["id"], t["state"]) for t in stats["tasks"]] == [
        (running["id"], "cancelled"),
        (after["id"], "completed"),
    ]
    assert stats["tasks"][0]["ended"] <= stats["tasks"][1]["started"]


@aio
async def test_offline_start_and_toggles() -> None:
    async with emulator(time_scale=0.1, offline=True) as (api, _):
        _, status = await api.call("GET", "/status")
        assert status["online"] is False
        code, answer = await api.call("POST", "/tasks", short_task())
        assert code == 503 and answer["code"] == "offline"
        code, _ = await api.call("POST", "/admin/online", token="wrong")
        assert code == 401

        assert await api.call("POST", "/admin/online") == (200, {"online": True})
        blocker = await api.submit(long_task())
        waiting = await api.submit(short_task())
        await api.wait(blocker["id"], "running")
        assert await api.call("POST", "/admin/offline") == (200, {"online": False})
        await api.call("POST", f"/tasks/{blocker['id']}/cancel")
        _, status = await api.call("GET", "/status")
        _, task = await api.call("GET", f"/tasks/{waiting['id']}")
        assert status["online"] is False and (status["running"], status["pending"]) == (0, 1)
        assert task["state"] == "queued" and task["queue_position"] == 1  # the queue is paused

        await api.call("POST", "/admin/online")
        done = await api.wait(waiting["id"], "completed")
    assert done["state"] == "completed"


def test_subprocess_with_port_zero_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qflow.emulator", "--port", "0", "--token-file", str(token_file)]
        + ["--time-scale", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline().strip()  # type: ignore[union-attr]
        prefix = "qflow emulator listening on http://127.0.0.1:"
        assert first.startswith(prefix), first
        port = int(first[len(prefix) :])
        assert port > 0

        async def use() -> tuple[dict[str, Any], dict[str, Any]]:
            async with aiohttp.ClientSession() as session:
                api = Api(session, f"http://127.0.0.1:{port}")
                task = await api.submit(STAR_MIS)
                await api.wait(task["id"], "completed")
                return (await api.call("GET", "/status"))[1], (
                    await api.call("GET", f"/tasks/{task['id']}/result")
                )[1]

        status, result = asyncio.run(asyncio.wait_for(use(), 20))
        assert status["online"] is True and status["tasks_completed"] == 1
        assert result["best_sample"] == [0, 1, 1, 1, 0]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert TOKEN not in out + err + first


def test_cli_refuses_to_start_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "QFLOW_EMULATOR_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "qflow.emulator", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert proc.returncode == 2
    assert "a token is required" in proc.stderr and "QFLOW_EMULATOR_TOKEN" in proc.stderr


# --- the rest connector -----------------------------------------------------------------------


def rest_connector(url: str, **keys: Any) -> RestQpuConnector:
    config = RestQpuConnector.Config(
        connector="rest", url=url, token=f"${{env:{TOKEN_ENV}}}", **keys
    )
    return RestQpuConnector("qpu", config)


@contextlib.asynccontextmanager
async def started(connector: RestQpuConnector) -> AsyncIterator[RestQpuConnector]:
    await connector.start()
    try:
        yield connector
    finally:
        await connector.stop()


async def wait_info(connector: RestQpuConnector, task_id: str, *states: str) -> Any:
    for _ in range(500):
        info = await connector.task_status(task_id)
        if info.state in states:
            return info
        await asyncio.sleep(0.01)
    raise AssertionError(f"{task_id} never reached {states}")


def no_token_in(exc: BaseException, token: str = TOKEN) -> None:
    text = "".join(traceback.format_exception(exc)) + repr(exc)
    assert token not in text, text


@contextlib.asynccontextmanager
async def served(**options: Any) -> AsyncIterator[tuple[str, QpuEmulator]]:
    runner, url = await start_emulator(TOKEN, **options)
    try:
        yield url, emulator_of(runner)
    finally:
        await stop_emulator(runner)


@pytest.fixture
def qpu_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN


@aio
async def test_connector_full_task_cycle(qpu_token: str) -> None:
    async with served(time_scale=0.1) as (url, qpu):
        connector = rest_connector(url, backend="superconducting")
        async with started(connector):
            status = await connector.status()
            assert (status.online, status.capacity, status.running) == (True, 1, 0)

            task_id = await connector.task_start(STAR_MIS, "lease-1-a")
            assert await connector.task_start(STAR_MIS, "lease-1-a") == task_id
            info = await wait_info(connector, task_id, "completed", "failed")
            result = await connector.task_result(task_id)
            logs = await connector.task_logs(task_id)
            await connector.task_stop(task_id)  # an ended task: nothing happens
            after = await connector.task_status(task_id)

            long_id = await connector.task_start(long_task(), "lease-1-b")
            await wait_info(connector, long_id, "running")
            with pytest.raises(ResultNotReady) as not_ready:
                await connector.task_result(long_id)
            await connector.task_stop(long_id)
            stopped = await connector.task_status(long_id)
    assert info.state == "completed" and after.state == "completed"
    assert info.qpu_seconds == pytest.approx(info.ended - info.started)
    assert result["best_sample"] == [0, 1, 1, 1, 0] and result["best_energy"] == -3.0
    assert "completed: best energy -3" in logs
    assert not_ready.value.status == 409 and "running" in str(not_ready.value)
    assert stopped.state == "cancelled"
    assert len(qpu.tasks) == 2  # the repeated key did not create a task


@aio
async def test_connector_reports_offline_without_retrying(qpu_token: str) -> None:
    async with served(offline=True) as (url, _):
        connector = rest_connector(url, backoff=5.0)  # a retry would outlast the deadline
        async with started(connector):
            assert (await connector.status()).online is False
            with pytest.raises(QpuOffline, match="offline"):
                await asyncio.wait_for(connector.task_start(STAR_MIS, "k"), 2)


async def _proxy(target: str, drop_first_post: bool) -> tuple[web.AppRunner, str, list[str]]:
    """A pass-through proxy that drops the connection after forwarding the first POST."""
    seen: list[str] = []
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with session.request(
            request.method, target + request.path_qs, data=await request.read(), headers=headers
        ) as upstream:
            body = await upstream.read()
        if drop_first_post and request.method == "POST" and seen.count(seen[-1]) == 1:
            request.transport.close()  # type: ignore[union-attr] - reset after processing
        return web.Response(body=body, status=upstream.status, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(lambda _: session.close())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}", seen


@aio
async def test_retried_submission_after_a_reset_creates_one_task(qpu_token: str) -> None:
    async with served(time_scale=0) as (url, qpu):
        proxy, proxy_url, seen = await _proxy(url, drop_first_post=True)
        try:
            connector = rest_connector(proxy_url, backoff=0.01)
            async with started(connector):
                task_id = await connector.task_start(STAR_MIS, "lease-7-x")
                info = await wait_info(connector, task_id, "completed")
        finally:
            await proxy.cleanup()
    assert seen.count("POST /v1/tasks") == 2  # the reset happened and the POST was retried
    assert list(qpu.tasks) == [task_id] and info.state == "completed"


@aio
async def test_connector_retries_until_the_service_is_back(qpu_token: str) -> None:
    async with served(time_scale=0) as (url, _):
        port = int(url.rsplit(":", 1)[1])
    # the service is down now; it comes back on the same port while the connector retries
    connector = rest_connector(url, http_retries=6, backoff=0.05)
    async with started(connector):
        call = asyncio.ensure_future(connector.status())
        await asyncio.sleep(0.15)
        assert not call.done()
        async with served(time_scale=0, port=port):
            status = await call
    assert status.online is True


@aio
async def test_unreachable_service_gives_a_clear_error_after_retries(qpu_token: str) -> None:
    async with served() as (url, _):
        pass  # the port is closed now
    connector = rest_connector(url, http_retries=2, backoff=0.01)
    async with started(connector):
        with pytest.raises(QpuUnreachable) as failure:
            await connector.status()
    message = str(failure.value)
    assert message.startswith(f"QPU qpu: GET {url}/v1/status failed after 3 attempt(s): ")
    no_token_in(failure.value)


@aio
async def test_wrong_token_is_an_auth_error_that_never_shows_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = "wrong-token-91d3"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    async with served() as (url, _):
        connector = rest_connector(url)
        async with started(connector):
            with pytest.raises(QpuAuthError) as failure:
                await connector.task_start(STAR_MIS, "k")
    assert failure.value.status == 401
    assert "HTTP 401: missing or invalid bearer token" in str(failure.value)
    assert f"${{env:{TOKEN_ENV}}}" in str(failure.value)  # the reference, not the value
    no_token_in(failure.value, wrong)
    no_token_in(failure.value, TOKEN)


@aio
async def test_a_service_echoing_the_token_is_scrubbed(qpu_token: str) -> None:
    async def echo(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        status = 500 if request.method == "GET" else 400
        return web.json_response({"error": f"rejected {header}"}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        connector = rest_connector(url, http_retries=1, backoff=0.01)
        async with started(connector):
            with pytest.raises(QpuRequestError) as bad:
                await connector.task_start(STAR_MIS, "k")
            with pytest.raises(QpuRequestError) as broken:
                await connector.status()
    finally:
        await runner.cleanup()
    assert str(bad.value).endswith("HTTP 400: rejected Bearer ***")
    assert "HTTP 500 (after 2 attempts): rejected Bearer ***" in str(broken.value)
    no_token_in(bad.value)
    no_token_in(broken.value)


def test_rest_location_in_deployment_yml(qpu_token: str) -> None:
    deployment = parse_deployment(
        f"""
version: 1
locations:
  here: {{connector: local}}
  qpu:
    connector: rest
    url: http://127.0.0.1:8765/
    token: ${{env:{TOKEN_ENV}}}
    vqpus: 2
    max_wait: 30
bindings: {{default: here}}
""",
        "site.yml",
    )
    config = deployment.locations["qpu"]
    assert isinstance(config, RestQpuConnector.Config)
    assert (config.url, config.vqpus, config.http_retries) == ("http://127.0.0.1:8765", 2, 3)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("url: http://q\n    token: inline-secret-value", "not accepted inline"),
        ("url: ftp://q\n    token: ${env:" + TOKEN_ENV + "}", "url must be an http://"),
        ("url: http://u:pw@q\n    token: ${env:" + TOKEN_ENV + "}", "must not carry credentials"),
    ],
)
def test_rest_location_errors(qpu_token: str, keys: str, expected: str) -> None:
    text = f"version: 1\nlocations:\n  qpu:\n    connector: rest\n    {keys}\n"
    with pytest.raises(DeploymentError) as failure:
        parse_deployment(text, "site.yml")
    assert expected in str(failure.value)
    assert "inline-secret-value" not in str(failure.value)


def test_docs_list_the_rest_connector_keys() -> None:
    table = reference_markdown(RestQpuConnector.Config, skip=QuantumLocationConfig.model_fields)
    assert table in DOCS.read_text(), "regenerate the rest-connector table in docs/emulator.md"
