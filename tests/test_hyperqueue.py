"""The hyperqueue connector against a real HyperQueue server (``hq_server`` fixture).

The server and its 2-core worker run in a helper process (``qflow.testing.hq_server``); the
connector connects to it with ``Client(server_dir)`` as it would to any running server.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hq_slurm_crash_run import crash_once_started

from qflow.connector import JobOutcome, JobSpec, Resources
from qflow.connectors import hyperqueue as hq_module
from qflow.connectors import hyperqueue_task
from qflow.connectors.hyperqueue import HyperQueueConnector, HyperQueueError
from qflow.connectors.hyperqueue_client import HqClient
from qflow.registry import connector_class
from qflow.rundir.journal import read_journal
from qflow.testing.hq_server import HqServer, HqUnavailable, start_server, stop_server
from qflow.testing.processes import process_alive

pytest.importorskip("hyperqueue", reason="the hyperqueue package is not installed")

PATH = "/usr/local/bin:/usr/bin:/bin"


def make_spec(
    tmp_path: Path,
    command: list[str],
    *,
    name: str = "step",
    env: dict[str, str] | None = None,
    stdin_path: str | None = None,
    stdout: str | None = "out.txt",
    stderr: str | None = "err.txt",
    cores: float | None = None,
    time_limit_s: int | None = None,
) -> JobSpec:
    return JobSpec(
        name=name,
        step=f"/{name}",
        iteration=None,
        command=command,
        cwd=str(tmp_path),
        env={"PATH": PATH, **(env or {})},
        stdin_path=stdin_path,
        stdout_path=str(tmp_path / stdout) if stdout else None,
        stderr_path=str(tmp_path / stderr) if stderr else None,
        resources=Resources(cores=cores, time_limit_s=time_limit_s),
    )


def make_connector(server: HqServer, tmp_path: Path, **keys: Any) -> HyperQueueConnector:
    cls = connector_class("hyperqueue")
    assert cls is HyperQueueConnector
    config = cls.Config(
        connector="hyperqueue",
        server_dir=str(server.server_dir),
        workdir=str(tmp_path / "hq-control"),
        **keys,
    )
    return cls("hq", config)


def with_connector(
    server: HqServer,
    tmp_path: Path,
    body: Callable[[HyperQueueConnector], Awaitable[Any]],
    **keys: Any,
) -> Any:
    """asyncio.run ``body(connector)`` between the connector's start and stop."""

    async def main() -> Any:
        connector = make_connector(server, tmp_path, **keys)
        await connector.start()
        try:
            return await body(connector)
        finally:
            await connector.stop()

    return asyncio.run(main())


async def run_job(connector: HyperQueueConnector, job: JobSpec) -> tuple[JobOutcome, list[str]]:
    started: list[str] = []
    outcome = await connector.run(job, started.append)
    return outcome, started


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def wait_gone(pids: list[int], timeout: float = 8.0) -> list[int]:
    """The pids still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if process_alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def read_pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()]


# -- results as the local connector gives them -------------------------------------------


def test_success_output_env_cwd_and_outcome(hq_server: HqServer, tmp_path: Path) -> None:
    job = make_spec(
        tmp_path,
        ["sh", "-c", 'echo "foo=$FOO over=$OVER"; pwd; env; echo to-stderr >&2'],
        env={"FOO": "bar", "OVER": "step"},
    )
    calls: list[str] = []

    async def body(connector: HyperQueueConnector) -> JobOutcome:
        return await connector.run(job, calls.append)

    before = time.time()
    outcome = with_connector(
        hq_server, tmp_path, body, nodes=1, environment={"OVER": "location", "EXTRA": "1"}
    )
    after = time.time()
    assert outcome.exit_code == 0, outcome
    assert outcome.message is None
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert lines[0] == "foo=bar over=location"  # the location's environment wins
    assert lines[1] == str(tmp_path)
    env = dict(line.split("=", 1) for line in lines[2:] if "=" in line)
    assert env["EXTRA"] == "1" and env["PATH"] == PATH
    # nothing of the worker's environment leaks but HyperQueue's allocation variables
    foreign = {k for k in env if not k.startswith("HQ_")} - {"FOO", "OVER", "EXTRA", "PATH"}
    assert foreign <= {"PWD", "SHLVL", "_"}, foreign  # set by sh itself
    assert "HQ_ACCESS_KEY" not in env
    assert env["HQ_JOB_ID"] == outcome.external_id
    assert "HOME" not in env and "PYTHONUNBUFFERED" not in env
    assert (tmp_path / "err.txt").read_text() == "to-stderr\n"
    # the outcome
    assert calls == [outcome.external_id]
    assert outcome.external_id is not None and outcome.external_id.isdigit()
    assert outcome.started is not None and outcome.ended is not None
    assert before <= outcome.started <= outcome.ended <= after
    assert outcome.nodes == 1
    assert outcome.node_seconds == pytest.approx(outcome.ended - outcome.started)
    assert hq_server.unfinished([int(outcome.external_id)]) == []


def test_exit_codes_preserved(hq_server: HqServer, tmp_path: Path) -> None:
    async def body(connector: HyperQueueConnector) -> list[JobOutcome]:
        jobs = [
            make_spec(tmp_path, ["sh", "-c", "exit 42"], name="fails"),
            make_spec(tmp_path, ["sh", "-c", "kill -9 $$"], name="killed"),
            make_spec(tmp_path, ["false"], name="false"),
        ]
        return [(await run_job(connector, job))[0] for job in jobs]

    fails, killed, false = with_connector(hq_server, tmp_path, body)
    assert fails.exit_code == 42 and fails.message is None
    assert killed.exit_code == -9  # as subprocess (and the local connector) reports a signal
    assert false.exit_code == 1


def test_stdin_from_file_and_no_stdin(hq_server: HqServer, tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    data.write_bytes(b"line one\nline two\n\xff binary\n")

    async def body(connector: HyperQueueConnector) -> tuple[JobOutcome, JobOutcome]:
        with_stdin = make_spec(tmp_path, ["cat"], name="cat", stdin_path=str(data))
        without = make_spec(tmp_path, ["cat"], name="empty", stdout="empty.txt")
        return (await run_job(connector, with_stdin))[0], (await run_job(connector, without))[0]

    first, second = with_connector(hq_server, tmp_path, body)
    assert first.exit_code == 0 and second.exit_code == 0
    assert (tmp_path / "out.txt").read_bytes() == data.read_bytes()
    assert (tmp_path / "empty.txt").read_bytes() == b""  # stdin closed, cat does not hang


def test_output_without_files_goes_to_qflow_stderr(
    hq_server: HqServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_spec(
        tmp_path,
        ["sh", "-c", "echo to-stdout-é; echo to-stderr >&2"],
        stdout=None,
        stderr=None,
    )

    async def body(connector: HyperQueueConnector) -> JobOutcome:
        return (await run_job(connector, job))[0]

    outcome = with_connector(hq_server, tmp_path, body)
    assert outcome.exit_code == 0
    captured = capsys.readouterr()
    assert "to-stdout-é\n" in captured.err and "to-stderr\n" in captured.err
    assert "to-stdout" not in captured.out


def test_missing_command_fails_the_step_with_a_message(hq_server: HqServer, tmp_path: Path) -> None:
    async def body(connector: HyperQueueConnector) -> JobOutcome:
        return (await run_job(connector, make_spec(tmp_path, ["/no/such/program"])))[0]

    outcome = with_connector(hq_server, tmp_path, body)
    assert outcome.exit_code == 127
    assert outcome.message and "/no/such/program" in outcome.message
    assert "FileNotFoundError" in outcome.message
    assert outcome.started is None


def test_cpus_from_config_and_step_cores(hq_server: HqServer, tmp_path: Path) -> None:
    async def body(connector: HyperQueueConnector) -> list[str]:
        counts = []
        for name, cores in (("default", None), ("step", 1.5)):
            job = make_spec(tmp_path, ["sh", "-c", "echo $HQ_CPUS"], name=name, cores=cores)
            outcome, _ = await run_job(connector, job)
            assert outcome.exit_code == 0
            counts.append((tmp_path / "out.txt").read_text().strip())
        return counts

    default, step = with_connector(hq_server, tmp_path, body)
    assert len(default.split(",")) == 1  # HQ_CPUS lists the task's CPU ids
    assert len(step.split(",")) == 2  # 1.5 cores rounded up
    (only,) = with_connector(
        hq_server,
        tmp_path,
        lambda c: asyncio.gather(
            run_job(c, make_spec(tmp_path, ["sh", "-c", "echo $HQ_CPUS"], name="cfg"))
        ),
        cpus=2,
    )
    assert only[0].exit_code == 0
    assert len((tmp_path / "out.txt").read_text().strip().split(",")) == 2


# -- time limits and cancellation ---------------------------------------------------------


def test_time_limit_terminates_the_process_group(hq_server: HqServer, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {pids}; wait"

    async def body(connector: HyperQueueConnector) -> list[JobOutcome]:
        step_limit = make_spec(tmp_path, ["sh", "-c", script], name="step", time_limit_s=1)
        default_limit = make_spec(tmp_path, ["sh", "-c", "exec sleep 60"], name="config")
        return [(await run_job(connector, j))[0] for j in (step_limit, default_limit)]

    step, config = with_connector(hq_server, tmp_path, body, time_limit=2)
    assert step.exit_code == -15  # SIGTERM, as the local connector reports it
    assert step.message == "exceeded its time limit of 1 s and was terminated"
    assert config.exit_code == -15
    assert config.message == "exceeded its time limit of 2 s and was terminated"
    assert step.ended - step.started == pytest.approx(1.0, abs=0.5)
    assert wait_gone(read_pids(pids)) == []  # the background child too


def test_cancel_kills_the_running_task(hq_server: HqServer, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # a shell that ignores SIGTERM (gets SIGKILL after the grace) and a background child
    script = f"trap '' TERM; sleep 60 & echo $$ $! > {pids}; wait; sleep 60"
    job = make_spec(tmp_path, ["sh", "-c", script])
    started: list[str] = []

    async def body(connector: HyperQueueConnector) -> float:
        task = asyncio.create_task(connector.run(job, started.append))
        await wait_for(lambda: bool(started) and pids.exists() and pids.read_text().strip())
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    cancel_s = with_connector(hq_server, tmp_path, body)
    # by the time run() re-raised, the whole group is gone
    assert [pid for pid in read_pids(pids) if process_alive(pid)] == []
    assert cancel_s < hq_module.CANCEL_WAIT_S
    job_id = int(started[0])
    deadline = time.monotonic() + 5
    while hq_server.unfinished([job_id]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hq_server.unfinished([job_id]) == []
    print(f"\ncancel of a SIGTERM-ignoring task took {cancel_s:.2f} s (grace 2 s)")


def test_cancel_while_queued_never_runs_the_command(hq_server: HqServer, tmp_path: Path) -> None:
    marker = tmp_path / "queued-ran"
    release = tmp_path / "release"
    # the first job takes both cores of the worker until `release` exists
    blocker = make_spec(
        tmp_path,
        ["sh", "-c", f"while [ ! -e {release} ]; do sleep 0.02; done"],
        name="blocker",
        cores=hq_server.cores,
    )
    queued = make_spec(tmp_path, ["touch", str(marker)], name="queued")
    queued_started: list[str] = []

    async def body(connector: HyperQueueConnector) -> tuple[JobOutcome, list[int]]:
        blocker_started: list[str] = []
        first = asyncio.create_task(connector.run(blocker, blocker_started.append))
        await wait_for(lambda: bool(blocker_started))
        second = asyncio.create_task(connector.run(queued, queued_started.append))
        await asyncio.sleep(0.5)
        assert queued_started == []  # still queued behind the blocker
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        ids = list(connector._leftovers)
        release.touch()
        outcome = await first
        # the cancelled job leaves the queue once the worker is free, without running
        await asyncio.sleep(0.5)
        return outcome, ids

    outcome, ids = with_connector(hq_server, tmp_path, body)
    assert outcome.exit_code == 0
    assert queued_started == []
    assert not marker.exists()
    deadline = time.monotonic() + 5
    while hq_server.unfinished(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hq_server.unfinished(ids) == []
    # the cancelled task's wrapper removed its control directory when it finally started
    assert list((tmp_path / "hq-control").iterdir()) == []


# -- concurrency, latency, the event loop ---------------------------------------------------


def test_two_jobs_overlap_on_a_two_core_worker(hq_server: HqServer, tmp_path: Path) -> None:
    assert hq_server.cores >= 2

    async def body(connector: HyperQueueConnector) -> list[tuple[JobOutcome, list[str]]]:
        jobs = [
            make_spec(tmp_path, ["sleep", "1"], name=f"par{i}", stdout=f"o{i}") for i in range(2)
        ]
        return await asyncio.gather(*(run_job(connector, j) for j in jobs))

    (a, _), (b, _) = with_connector(hq_server, tmp_path, body)
    assert a.exit_code == 0 and b.exit_code == 0
    assert a.external_id != b.external_id
    assert a.started < b.ended and b.started < a.ended  # the two commands ran at once


def test_the_blocking_client_never_runs_on_the_event_loop(
    hq_server: HqServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HyperQueue client blocks (and holds the GIL): each of its calls runs on the
    location's client thread, never on the loop's."""
    calls: list[tuple[str, str]] = []
    for name in ("_connect", "_submit", "_status"):

        def recording(self: HqClient, *args: Any, _original: Any = getattr(HqClient, name),
                      _name: str = name) -> Any:  # fmt: skip
            calls.append((_name, threading.current_thread().name))
            return _original(self, *args)

        monkeypatch.setattr(HqClient, name, recording)

    async def body(connector: HyperQueueConnector) -> str:
        jobs = [make_spec(tmp_path, ["true"], name=f"s{i}", stdout=f"o{i}") for i in range(3)]
        outcomes = await asyncio.gather(*(run_job(connector, j) for j in jobs))
        assert all(o.exit_code == 0 for o, _ in outcomes)
        return threading.current_thread().name

    loop_thread = with_connector(hq_server, tmp_path, body)
    assert {name for name, _ in calls} == {"_connect", "_submit", "_status"}
    assert all(thread.startswith("qflow-hq-") for _, thread in calls), calls
    assert loop_thread not in {thread for _, thread in calls}


def test_completion_latency_benchmark(hq_server: HqServer, tmp_path: Path) -> None:
    """Submit→start and end→noticed for trivial tasks (printed; timings are not asserted)."""
    runs = 20

    async def body(connector: HyperQueueConnector) -> list[tuple[float, float, float, float]]:
        rows = []
        for i in range(runs):
            job = make_spec(tmp_path, ["true"], name=f"lat{i}", stdout=None, stderr=None)
            started_at: list[float] = []
            t_submit = time.time()
            outcome = await connector.run(job, lambda _id, at=started_at: at.append(time.time()))
            t_return = time.time()
            assert outcome.exit_code == 0 and outcome.started and outcome.ended
            assert len(started_at) == 1
            rows.append((t_submit, outcome.started, outcome.ended, t_return))
        return rows

    rows = with_connector(hq_server, tmp_path, body)
    submit_to_start = [(s - sub) * 1000 for sub, s, _, _ in rows]
    end_to_noticed = [(ret - e) * 1000 for _, _, e, ret in rows]
    round_trip = [(ret - sub) * 1000 for sub, _, _, ret in rows]
    assert all(x >= 0 for x in submit_to_start + end_to_noticed)

    def fmt(values: list[float]) -> str:
        return (
            f"median {statistics.median(values):.0f} ms, max {max(values):.0f} ms "
            f"(min {min(values):.0f} ms)"
        )

    print(f"\nHyperQueue connector, {runs} trivial tasks, poll_interval 0.05 s:")
    print(f"  submit -> command started: {fmt(submit_to_start)}")
    print(f"  command ended -> run() returned: {fmt(end_to_noticed)}")
    print(f"  whole step: {fmt(round_trip)} (HyperQueue's wait_for_jobs polls once per 1 s)")


# -- failures outside the command -------------------------------------------------------------


def test_start_fails_clearly_without_a_server(tmp_path: Path) -> None:
    cls = HyperQueueConnector
    connector = cls(
        "nowhere", cls.Config(connector="hyperqueue", server_dir=str(tmp_path / "no-server"))
    )
    with pytest.raises(HyperQueueError, match="server_dir .*no-server does not exist"):
        asyncio.run(connector.start())
    asyncio.run(connector.stop())


def test_task_that_cannot_start_is_reported(hq_server: HqServer, tmp_path: Path) -> None:
    """The wrapper never runs (bad interpreter): the server's failure ends the wait."""

    async def body(connector: HyperQueueConnector) -> JobOutcome:
        return (await run_job(connector, make_spec(tmp_path, ["true"])))[0]

    outcome = with_connector(hq_server, tmp_path, body, python="/no/such/python3")
    assert outcome.exit_code != 0
    assert outcome.message and "without an exit status" in outcome.message
    assert "/no/such/python3" in outcome.message  # HyperQueue's own error text
    assert outcome.started is None


def test_server_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    """Stopping the helper (as the fixture does) ends running tasks and their children."""
    try:
        server = start_server(tmp_path / "own-server", cores=1)
    except HqUnavailable as exc:
        pytest.skip(f"no local HyperQueue server: {exc}")
    pids = tmp_path / "pids"
    job = make_spec(tmp_path, ["sh", "-c", f"sleep 60 & echo $$ $! > {pids}; wait"])
    try:

        async def body(connector: HyperQueueConnector) -> tuple[JobOutcome, int]:
            task = asyncio.create_task(connector.run(job, lambda _id: None))
            await wait_for(lambda: pids.exists() and bool(pids.read_text().strip()))
            rc = await asyncio.to_thread(stop_server, server)
            return await asyncio.wait_for(task, 15), rc

        hq_module.SERVER_LOST_S, saved = 1.0, hq_module.SERVER_LOST_S
        try:
            outcome, rc = with_connector(server, tmp_path, body)
        finally:
            hq_module.SERVER_LOST_S = saved
    finally:
        stop_server(server)
    assert rc == 0, server.log  # the helper's SIGTERM handler stopped the cluster cleanly
    assert not process_alive(server.pid)
    assert wait_gone(read_pids(pids)) == []  # the command and its background child
    # qflow did not hang on the lost task; HyperQueue SIGINTs a task when its worker stops
    assert outcome.exit_code != 0
    assert outcome.message and (
        "was ended by HyperQueue (SIGINT" in outcome.message
        or "without an exit status" in outcome.message
    ), outcome.message


def test_killed_wrapper_takes_the_command_with_it(hq_server: HqServer, tmp_path: Path) -> None:
    """SIGKILL of the task's main process (the wrapper): its guardian ends the command group,
    and the server's report of the failed task ends qflow's wait."""
    pids = tmp_path / "pids"
    job = make_spec(tmp_path, ["sh", "-c", f"sleep 60 & echo $$ $! > {pids}; wait"])

    async def body(connector: HyperQueueConnector) -> JobOutcome:
        task = asyncio.create_task(connector.run(job, lambda _id: None))
        await wait_for(lambda: pids.exists() and bool(pids.read_text().strip()))
        (control,) = connector._leftovers.values()
        # killed once it has reported the start (the wrapper writes it just after the launch)
        await wait_for(lambda: (control / "started").exists())
        wrapper = json.loads((control / "pid").read_text())["pid"]
        os.kill(wrapper, signal.SIGKILL)
        return await asyncio.wait_for(task, 15)

    outcome = with_connector(hq_server, tmp_path, body)
    assert wait_gone(read_pids(pids)) == []
    assert outcome.exit_code != 0
    assert outcome.message and "without an exit status" in outcome.message, outcome.message
    assert outcome.started is not None  # it did start


def test_cancel_orphan_ends_the_task_of_a_killed_run(hq_server: HqServer, tmp_path: Path) -> None:
    """The job's control directory is journalled before it is submitted: after a real crash
    (SIGKILL of a qflow stand-in mid-step) the task runs on; cancel_orphan of the journal's
    record, even without the HyperQueue job id, ends the command's process group and the task."""
    pids = tmp_path / "pids"
    journal = tmp_path / "journal.jsonl"
    config = {"connector": "hyperqueue", "server_dir": str(hq_server.server_dir),
              "workdir": str(tmp_path / "hq-control")}  # fmt: skip
    command = ["sh", "-c", f"sleep 60 & echo $$ $! > {pids}; wait"]
    step = crash_once_started(
        config, journal, tmp_path, command, lambda: pids.exists() and bool(pids.read_text())
    )
    job_id = int(step)
    alive = read_journal(journal).alive
    assert sorted(r.kind for r in alive) == ["execution", "hq-job"]
    (hq_job,) = [r for r in alive if r.kind == "hq-job"]
    assert hq_job.external_id == str(job_id)
    assert hq_server.unfinished([job_id]) == [job_id]  # the crash left it running
    assert all(process_alive(pid) for pid in read_pids(pids))

    async def main() -> None:
        resumed = make_connector(hq_server, tmp_path)
        try:
            for resource in alive:  # as a resume does: oldest first, here without job ids
                await resumed.cancel_orphan(replace(resource, external_id=None))
            with pytest.raises(HyperQueueError, match="cannot end a 'slurm-allocation'"):
                await resumed.cancel_orphan(replace(hq_job, kind="slurm-allocation"))
        finally:
            await resumed.stop()

    asyncio.run(main())
    assert [pid for pid in read_pids(pids) if process_alive(pid)] == []
    deadline = time.monotonic() + 5
    while hq_server.unfinished([job_id]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hq_server.unfinished([job_id]) == []
    assert not Path(hq_job.handle["control"]).exists()


def test_config_keys_are_documented() -> None:
    fields = HyperQueueConnector.Config.model_fields
    for key in ("server_dir", "cpus", "time_limit", "poll_interval", "environment", "workdir"):
        assert fields[key].description, key
    assert fields["server_dir"].is_required()
    assert fields["cpus"].default == 1 and fields["poll_interval"].default == 0.05
    with pytest.raises(ValueError):
        HyperQueueConnector.Config(connector="hyperqueue")
    with pytest.raises(ValueError):
        HyperQueueConnector.Config(
            connector="hyperqueue", server_dir="/x", environment={"A=B": "1"}
        )


def test_finished_jobs_are_forgotten_and_cleaned_up(hq_server: HqServer, tmp_path: Path) -> None:
    async def body(connector: HyperQueueConnector) -> list[JobOutcome]:
        jobs = [make_spec(tmp_path, ["sh", "-c", f"exit {i}"], name=f"j{i}") for i in range(3)]
        return [(await run_job(connector, j))[0] for j in jobs]

    outcomes = with_connector(hq_server, tmp_path, body)
    assert [o.exit_code for o in outcomes] == [0, 1, 2]
    ids = [int(o.external_id or 0) for o in outcomes]
    assert hq_server.job_status(ids) == {}  # forgotten by the server
    assert list((tmp_path / "hq-control").iterdir()) == []  # control directories removed


def test_a_step_ending_never_reaps_a_job_another_step_still_waits_for(
    hq_server: HqServer, tmp_path: Path
) -> None:
    """Step A ends (and cleans up finished jobs) after B's task has ended but before B's
    ``run()`` has read B's exit status: B's control directory must survive until then."""

    async def body(connector: HyperQueueConnector) -> list[JobOutcome]:
        # poll_interval 2 s: B checks at 0, 2, 4 s; its task ends at ~2.2 s; A, started at
        # 1.5 s, reads its exit status at 3.5 s and reaps what the server says has ended.
        b_spec = make_spec(tmp_path, ["sleep", "2"], name="b", stdout="b.txt")
        b = asyncio.ensure_future(run_job(connector, b_spec))
        await asyncio.sleep(1.5)
        a = await run_job(connector, make_spec(tmp_path, ["true"], name="a"))
        return [a[0], (await b)[0]]

    a, b = with_connector(hq_server, tmp_path, body, poll_interval=2)
    assert a.exit_code == 0, a
    assert b.exit_code == 0 and b.message is None, b
    ids = [int(o.external_id or 0) for o in (a, b)]
    assert hq_server.job_status(ids) == {}  # both forgotten once read
    assert list((tmp_path / "hq-control").iterdir()) == []


# -- the task wrapper: a stdlib-only script shipped with each job ----------------------------

WRAPPER = Path(hyperqueue_task.__file__).with_name("hyperqueue_wrapper.py")


def test_the_task_runs_the_wrapper_copied_into_its_control_directory(
    hq_server: HqServer, tmp_path: Path
) -> None:
    """The worker runs ``python -I -S CONTROL/wrapper.py CONTROL``, a copy of
    hyperqueue_wrapper.py that travels with the job's control files (so a remote worker
    needs nothing of qflow's installation)."""
    script = "set -- $(tr '\\0' ' ' < /proc/$PPID/cmdline); echo \"$@\"; cp \"$4\" copy.py"
    job = make_spec(tmp_path, ["sh", "-c", script])

    async def body(connector: HyperQueueConnector) -> JobOutcome:
        return (await run_job(connector, job))[0]

    outcome = with_connector(hq_server, tmp_path, body)
    assert outcome.exit_code == 0, outcome
    python, *args = (tmp_path / "out.txt").read_text().split()
    control = Path(args[-1])
    assert Path(python).name.startswith("python")
    assert args == ["-I", "-S", str(control / "wrapper.py"), str(control)]
    assert control.parent == tmp_path / "hq-control"
    assert (tmp_path / "copy.py").read_bytes() == WRAPPER.read_bytes()


def test_the_wrapper_imports_the_standard_library_only() -> None:
    tree = ast.parse(WRAPPER.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    top = {name.split(".")[0] for name in imported}
    assert top <= set(sys.stdlib_module_names) | {"__future__"}, top


def wrapper_control(tmp_path: Path, command: list[str], **spec: Any) -> Path:
    """A control directory as write_spec makes it, for the wrapper run without HyperQueue."""
    control = tmp_path / "control"
    control.mkdir()
    job = make_spec(tmp_path, command, stdout=None, stderr=None)
    hyperqueue_task.write_spec(control, job, job.env, spec.get("time_limit"), 0.02)
    return control


def run_wrapper(control: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", str(control / hyperqueue_task.WRAPPER_FILE), str(control)],
        capture_output=True, text=True, timeout=30, env={},
    )  # fmt: skip


def test_the_wrapper_runs_as_a_script_on_its_control_directory(tmp_path: Path) -> None:
    control = wrapper_control(tmp_path, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    proc = run_wrapper(control)
    assert proc.returncode == 7 and proc.stderr == "", proc.stderr
    assert (control / "capture").read_text() == "out\nerr\n"
    record = json.loads((control / "exit").read_text())
    started = json.loads((control / "started").read_text())
    assert record["exit_code"] == 7 and record["reason"] is None and record["error"] is None
    assert record["started"] == started["time"] <= record["ended"]
    assert json.loads((control / "pid").read_text())["host"] == record["host"]


def test_the_wrapper_enforces_the_time_limit(tmp_path: Path) -> None:
    control = wrapper_control(tmp_path, ["sleep", "30"], time_limit=1)
    proc = run_wrapper(control)
    assert proc.returncode == 128 + signal.SIGTERM  # sleep 30 ended by the 1 s limit
    record = json.loads((control / "exit").read_text())
    assert record["reason"] == "timeout" and record["exit_code"] == -signal.SIGTERM


def test_the_wrapper_reports_a_command_it_cannot_start(tmp_path: Path) -> None:
    control = wrapper_control(tmp_path, ["/no/such/command"])
    assert run_wrapper(control).returncode == 127
    record = json.loads((control / "exit").read_text())
    assert record["started"] is None and "FileNotFoundError" in record["error"]


def test_the_wrapper_of_a_task_cancelled_while_queued_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    control = wrapper_control(tmp_path, ["touch", str(marker)])
    (control / "cancel").touch()
    assert run_wrapper(control).returncode == 1
    assert not control.exists() and not marker.exists()
