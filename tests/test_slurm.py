"""The slurm connector against a real Slurm cluster started on this host (``slurm_cluster``).

Each test drives :class:`SlurmConnector` directly with :class:`JobSpec` objects. Times that
come from Slurm have whole-second resolution, so the jobs that check them last > 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hq_slurm_crash_run import crash_once_started
from pydantic import ValidationError

from qflow.connector import JobOutcome, JobSpec, Resources
from qflow.connectors.slurm import SlurmConnector, SlurmError
from qflow.connectors.slurm_script import job_name
from qflow.connectors.transport import TransportError
from qflow.registry import connector_class
from qflow.rundir.journal import Resource, read_journal
from qflow.testing.slurm_cluster import ClusterUnavailable
from qflow.testing.sshd import SshServer, start_sshd

pytestmark = pytest.mark.slurm

NOTICE_LIMIT_S = 0.4
"""Upper bound asserted for "job end -> run() returns" (target 0.2 s; this host is noisy)."""


def make_connector(cluster: Any, tmp_path: Path, **keys: Any) -> SlurmConnector:
    config = SlurmConnector.Config(
        connector="slurm",
        slurm_conf=str(cluster.conf),
        workdir=str(tmp_path / "slurm-work"),
        **{"partition": "compute", **keys},
    )
    return SlurmConnector("test-slurm", config)


def spec(
    tmp_path: Path,
    command: list[str],
    *,
    name: str = "step",
    stdout: str | None = "out.txt",
    stderr: str | None = "err.txt",
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    **resources: Any,
) -> JobSpec:
    return JobSpec(
        name=name,
        step=f"/{name}",
        iteration=None,
        command=command,
        cwd=str(tmp_path),
        env=env if env is not None else {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        stdin_path=str(tmp_path / stdin) if stdin else None,
        stdout_path=str(tmp_path / stdout) if stdout else None,
        stderr_path=str(tmp_path / stderr) if stderr else None,
        resources=Resources(**resources),
    )


class Started:
    """An ``on_started`` callback that records its calls and can be awaited."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, float]] = []
        self.event = asyncio.Event()

    def __call__(self, external_id: str | None) -> None:
        self.calls.append((external_id, time.time()))
        self.event.set()

    async def wait(self, timeout: float = 20) -> str:
        await asyncio.wait_for(self.event.wait(), timeout)
        return self.calls[0][0] or ""


async def run_with(connector: SlurmConnector, job: JobSpec) -> tuple[JobOutcome, Started, float]:
    started = Started()
    outcome = await connector.run(job, started)
    return outcome, started, time.time()


def process_alive(marker: str) -> bool:
    out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    return any(marker in line and not line.startswith("Z") for line in out.splitlines())


def assert_cancelled(cluster: Any, jobid: str, marker: str) -> None:
    """Slurm ended ``jobid`` as CANCELLED and the step's process (``marker``) is gone."""
    state = cluster.run("squeue", "-h", "--states=all", f"--jobs={jobid}", "-o", "%T")
    assert state.strip() == "CANCELLED"
    assert not process_alive(marker)


def batch_flag(cluster: Any, jobid: str) -> str:
    """``1`` for a batch job (sbatch), ``0`` for an allocation (salloc), from the controller."""
    shown = cluster.run("scontrol", "show", "job", "--oneliner", jobid)
    match = re.search(r"BatchFlag=(\d)", shown)
    assert match, shown
    return match.group(1)


# -- configuration ----------------------------------------------------------------------


def test_entry_point_and_config_keys() -> None:
    assert connector_class("slurm") is SlurmConnector
    keys = set(SlurmConnector.Config.model_fields)
    assert {"partition", "gres", "time", "extra", "workdir", "poll_interval"} <= keys
    with pytest.raises(ValidationError, match="not a Slurm time"):
        SlurmConnector.Config(connector="slurm", time="soon")
    with pytest.raises(ValidationError, match="not an sbatch option"):
        SlurmConnector.Config(connector="slurm", extra=["exclusive"])
    with pytest.raises(ValidationError, match="only apply with login"):
        SlurmConnector.Config(connector="slurm", ssh_port=2222)
    with pytest.raises(ValidationError, match="not a user@host"):
        SlurmConnector.Config(connector="slurm", login="-oProxyCommand=evil")
    assert SlurmConnector.Config(connector="slurm", time="1-12:00:00").time == "1-12:00:00"
    assert SlurmConnector.Config(connector="slurm").submit == "sbatch"


def test_submit_salloc_with_login_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="submit: salloc .* Fix: use submit: sbatch"):
        SlurmConnector.Config(connector="slurm", login="alice@login", submit="salloc")
    SlurmConnector.Config(connector="slurm", login="alice@login", submit="sbatch")


def test_resources_map_to_sbatch_options(tmp_path: Path) -> None:
    config = SlurmConnector.Config(
        connector="slurm",
        partition="quantum",
        gres="qpu:1",
        time=30,
        extra=["--exclusive"],
        workdir=str(tmp_path / "w"),
    )
    connector = SlurmConnector("q", config)
    asyncio.run(connector._prepare())  # creates the work directory, finds srun
    job = spec(tmp_path, ["true"], cores=1.5, ram_mib=300.2, time_limit_s=61)
    args = connector.plan(job).args
    assert {"--partition=quantum", "--gres=qpu:1", "--cpus-per-task=2", "--mem=301M"} <= set(args)
    assert "--time=2" in args and "--time=30" not in args  # the step's limit wins, rounded up
    assert args[-1] == "--exclusive"
    plain = connector.plan(spec(tmp_path, ["true"])).args
    assert "--time=30" in plain
    # salloc gets exactly the resource options, sbatch those plus its own flags
    plan = connector.plan(job)
    assert plan.args[-len(plan.options) :] == plan.options
    assert not [o for o in plan.options if o.startswith(("--output", "--parsable", "--export"))]


# -- real jobs ----------------------------------------------------------------------------


def test_success_files_times_and_node_seconds(slurm_cluster: Any, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from stdin\n")
    script = "date +%s.%N > begin.txt; cat; echo to-stderr >&2; sleep 1.2; date +%s.%N > end.txt"
    job = spec(tmp_path, ["sh", "-c", script], stdin="in.txt")

    async def main() -> tuple[JobOutcome, Started, float]:
        connector = make_connector(slurm_cluster, tmp_path)
        await connector.start()
        try:
            return await run_with(connector, job)
        finally:
            await connector.stop()

    outcome, started, returned = asyncio.run(main())
    assert outcome.exit_code == 0, outcome.message
    assert outcome.message is None
    assert (tmp_path / "out.txt").read_text() == "from stdin\n"
    assert (tmp_path / "err.txt").read_text() == "to-stderr\n"
    assert outcome.external_id and outcome.external_id.isdigit()
    assert [c[0] for c in started.calls] == [outcome.external_id]
    begin = float((tmp_path / "begin.txt").read_text())
    end = float((tmp_path / "end.txt").read_text())
    # Slurm's own clock, whole seconds
    assert outcome.started is not None and outcome.ended is not None
    assert outcome.started < outcome.ended
    assert outcome.started <= begin + 0.01 and begin - outcome.started < 2
    assert outcome.ended >= int(end) and outcome.ended - end < 2
    assert outcome.nodes == 1
    assert outcome.node_seconds == pytest.approx(outcome.nodes * (outcome.ended - outcome.started))
    assert returned - end < NOTICE_LIMIT_S, f"noticed {returned - end:.3f} s after the end"
    # the job's files in workdir are cleaned up
    assert list((tmp_path / "slurm-work").iterdir()) == []


@pytest.mark.parametrize("submit", ["sbatch", "salloc"])
def test_environment_is_exactly_the_steps(
    slurm_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, submit: str
) -> None:
    monkeypatch.setenv("QFLOW_ORCHESTRATOR_ONLY", "must-not-leak")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ODD": "a b 'c' \"d\" $HOME `x` \\ end",
        "MULTI": "line1\nline2",
        "LOCATION_WINS": "step",
    }
    job = spec(tmp_path, ["env", "-0"], env=env, stderr=None)

    async def main() -> JobOutcome:
        connector = make_connector(
            slurm_cluster,
            tmp_path,
            environment={"LOCATION_WINS": "location", "EXTRA": "1"},
            submit=submit,
        )
        try:
            return (await run_with(connector, job))[0]
        finally:
            await connector.stop()

    outcome = asyncio.run(main())
    assert outcome.exit_code == 0, outcome.message
    seen = dict(
        item.split("=", 1)
        for item in (tmp_path / "out.txt").read_text().split("\0")
        if item and not item.startswith(("SLURM_", "SLURMD_"))
    )
    expected = {**env, "LOCATION_WINS": "location", "EXTRA": "1"}
    assert seen == expected


def test_stdout_without_file_goes_to_qflow_stderr(
    slurm_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = uuid.uuid4().hex
    job = spec(tmp_path, ["echo", marker], stdout=None, stderr=None)

    async def main() -> JobOutcome:
        connector = make_connector(slurm_cluster, tmp_path)
        try:
            return (await run_with(connector, job))[0]
        finally:
            await connector.stop()

    outcome = asyncio.run(main())
    assert outcome.exit_code == 0
    captured = capsys.readouterr()
    assert marker in captured.err
    assert marker not in captured.out


def test_failing_step_returns_its_exit_code(slurm_cluster: Any, tmp_path: Path) -> None:
    job = spec(tmp_path, ["sh", "-c", "echo broken >&2; exit 3"])

    async def main() -> tuple[JobOutcome, Started, float]:
        connector = make_connector(slurm_cluster, tmp_path)
        try:
            return await run_with(connector, job)
        finally:
            await connector.stop()

    outcome, _, _ = asyncio.run(main())
    assert outcome.exit_code == 3
    # from the job's exit marker: its status, job id and node (no need to ask Slurm)
    assert re.fullmatch(r"exited with status 3 \(Slurm job \d+ on c\d\)", outcome.message or "")
    assert (tmp_path / "err.txt").read_text() == "broken\n"


def test_missing_working_directory_fails_the_step(slurm_cluster: Any, tmp_path: Path) -> None:
    job = spec(tmp_path, ["true"])
    job = JobSpec(**{**job.__dict__, "cwd": str(tmp_path / "does-not-exist")})

    async def main() -> JobOutcome:
        connector = make_connector(slurm_cluster, tmp_path)
        try:
            return (await run_with(connector, job))[0]
        finally:
            await connector.stop()

    outcome = asyncio.run(main())
    assert outcome.exit_code == 1
    assert "cannot enter" in (outcome.message or "")


def test_time_limit_gives_timeout(slurm_cluster: Any, tmp_path: Path) -> None:
    """A real Slurm TIMEOUT, without waiting a minute.

    Slurm's smallest limit is one minute; the test submits with ``time_limit_s=60``
    (``--time=1``), then lowers the running job's limit to zero with
    ``scontrol update JobId=... TimeLimit-=1``. slurmctld enforces limits in a periodic check
    (every 30 s), so the job ends TIMEOUT within about 30 s.
    """
    marker = f"sleep 9{uuid.uuid4().int % 1000}.5"
    job = spec(tmp_path, ["sh", "-c", marker], time_limit_s=60)

    async def main() -> JobOutcome:
        connector = make_connector(slurm_cluster, tmp_path, squeue_interval=1.0)
        started = Started()
        try:
            task = asyncio.ensure_future(connector.run(job, started))
            jobid = await started.wait()
            slurm_cluster.run("scontrol", "update", f"JobId={jobid}", "TimeLimit-=1")
            return await asyncio.wait_for(task, 60)
        finally:
            await connector.stop()

    outcome = asyncio.run(main())
    assert outcome.exit_code == -15
    assert "time limit" in (outcome.message or "")
    assert "TIMEOUT" in (outcome.message or "")
    assert outcome.started is not None and outcome.ended is not None
    assert not process_alive(marker)


def test_scancel_from_outside(slurm_cluster: Any, tmp_path: Path) -> None:
    """A job Slurm ends before its script does writes no exit marker: the squeue safety net
    (every ``squeue_interval``) notices it."""
    marker = f"sleep 8{uuid.uuid4().int % 1000}.5"
    job = spec(tmp_path, ["sh", "-c", marker])

    async def main() -> tuple[JobOutcome, float]:
        connector = make_connector(slurm_cluster, tmp_path, squeue_interval=1.0)
        started = Started()
        try:
            task = asyncio.ensure_future(connector.run(job, started))
            jobid = await started.wait()
            await asyncio.sleep(0.2)
            t0 = time.time()
            slurm_cluster.run("scancel", jobid)
            outcome = await asyncio.wait_for(task, 30)
            return outcome, time.time() - t0
        finally:
            await connector.stop()

    outcome, took = asyncio.run(main())
    assert outcome.exit_code == -15
    assert "CANCELLED" in (outcome.message or "")
    assert took < 6  # KillWait=2 on the test cluster, + the 1 s squeue interval
    assert not process_alive(marker)


@pytest.mark.parametrize("submit", ["sbatch", "salloc"])
def test_asyncio_cancel_scancels_the_running_job(
    slurm_cluster: Any, tmp_path: Path, submit: str
) -> None:
    marker = f"sleep 7{uuid.uuid4().int % 1000}.5"
    job = spec(tmp_path, ["sh", "-c", marker])

    async def main() -> tuple[str, list[str]]:
        connector = make_connector(slurm_cluster, tmp_path, submit=submit)
        started = Started()
        try:
            task = asyncio.ensure_future(connector.run(job, started))
            jobid = await started.wait()
            # RUNNING in squeue comes a little before slurmd has started the batch script
            for _ in range(100):
                if process_alive(marker):
                    break
                await asyncio.sleep(0.05)
            assert process_alive(marker)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return jobid, slurm_cluster.active_jobs()  # before stop(): the cancel did it all
        finally:
            await connector.stop()

    jobid, active_after_cancel = asyncio.run(main())
    assert jobid and jobid not in active_after_cancel  # (an earlier test's job may complete)
    assert_cancelled(slurm_cluster, jobid, marker)


def test_asyncio_cancel_of_a_pending_job(slurm_cluster: Any, tmp_path: Path) -> None:
    job = spec(tmp_path, ["true"])

    async def main() -> Started:
        connector = make_connector(slurm_cluster, tmp_path, extra=["--begin=now+600"])
        started = Started()
        try:
            task = asyncio.ensure_future(connector.run(job, started))
            for _ in range(100):  # until sbatch returned and the job is known
                await asyncio.sleep(0.05)
                if connector._tracked:
                    break
            assert slurm_cluster.active_jobs(), "the job should be pending"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return started
        finally:
            await connector.stop()

    started = asyncio.run(main())
    assert started.calls == []  # it never ran
    assert slurm_cluster.active_jobs() == []


def test_three_concurrent_jobs_overlap_with_one_poller(slurm_cluster: Any, tmp_path: Path) -> None:
    async def main() -> tuple[list[JobOutcome], list[float], int]:
        connector = make_connector(slurm_cluster, tmp_path, nodes=1)
        jobs = [
            spec(
                tmp_path,
                ["sh", "-c", f"sleep 3; date +%s.%N > end{i}.txt"],
                name=f"par{i}",
                stdout=f"out{i}.txt",
                stderr=f"err{i}.txt",
            )
            for i in range(3)
        ]
        tasks = [asyncio.ensure_future(run_with(connector, j)) for j in jobs]
        pollers = 0
        for _ in range(100):
            await asyncio.sleep(0.05)
            names = [t.get_name() for t in asyncio.all_tasks()]
            pollers = max(pollers, sum(n.startswith("qflow-slurm-poller") for n in names))
            if len(connector._tracked) == 3:
                break
        try:
            results = await asyncio.gather(*tasks)
        finally:
            await connector.stop()
        latencies = [
            returned - float((tmp_path / f"end{i}.txt").read_text())
            for i, (_, _, returned) in enumerate(results)
        ]
        return [r[0] for r in results], latencies, pollers

    outcomes, latencies, pollers = asyncio.run(main())
    assert pollers == 1
    assert all(o.exit_code == 0 for o in outcomes), [o.message for o in outcomes]
    assert len({o.external_id for o in outcomes}) == 3
    assert max(o.started for o in outcomes) < min(o.ended for o in outcomes)  # type: ignore[type-var]
    assert all(o.nodes == 1 for o in outcomes)
    assert max(latencies) < NOTICE_LIMIT_S, latencies
    print(f"completion latencies: {', '.join(f'{x:.3f}' for x in latencies)} s", file=sys.stderr)


def test_quantum_partition_hands_out_four_virtual_qpus(slurm_cluster: Any, tmp_path: Path) -> None:
    """Five 1-QPU jobs on a node with 4 vQPUs: four run together, each on its own vQPU."""
    show = 'scontrol show job -d "$SLURM_JOB_ID" | grep -o "qpu:1(IDX:[0-9])"; sleep 2.5'

    async def main() -> list[JobOutcome]:
        connector = make_connector(slurm_cluster, tmp_path, partition="quantum", gres="qpu:1")
        jobs = [
            spec(tmp_path, ["sh", "-c", show], name=f"q{i}", stdout=f"q{i}.txt", stderr=None)
            for i in range(5)
        ]
        try:
            return [r[0] for r in await asyncio.gather(*(run_with(connector, j) for j in jobs))]
        finally:
            await connector.stop()

    outcomes = asyncio.run(main())
    assert all(o.exit_code == 0 for o in outcomes), [o.message for o in outcomes]
    indices = [(tmp_path / f"q{i}.txt").read_text().strip() for i in range(5)]
    assert all(ix.startswith("qpu:1(IDX:") for ix in indices), indices
    order = sorted(range(5), key=lambda i: (outcomes[i].started, outcomes[i].ended))
    first, last = order[:4], order[4]
    assert len({indices[i] for i in first}) == 4  # four distinct vQPUs at once
    assert max(outcomes[i].started for i in first) < min(outcomes[i].ended for i in first)  # type: ignore[type-var]
    assert outcomes[last].started >= min(outcomes[i].ended for i in first)  # type: ignore[operator]


def test_mpi_step_runs_its_tasks_under_srun(slurm_cluster: Any, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STEP_VAR": "kept"}
    job = spec(
        tmp_path, ["sh", "-c", 'echo "$SLURM_PROCID $STEP_VAR"'], env=env, mpi_procs=3, cores=1
    )

    async def main() -> JobOutcome:
        connector = make_connector(slurm_cluster, tmp_path)
        try:
            return (await run_with(connector, job))[0]
        finally:
            await connector.stop()

    outcome = asyncio.run(main())
    assert outcome.exit_code == 0, outcome.message
    lines = sorted((tmp_path / "out.txt").read_text().split("\n"))
    assert lines == ["", "0 kept", "1 kept", "2 kept"]
    assert outcome.nodes is not None and outcome.nodes >= 2  # 3 tasks on 2-CPU nodes


def test_finished_job_is_found_in_the_jobcomp_file(slurm_cluster: Any, tmp_path: Path) -> None:
    """The path for jobs that already left squeue: ``sacct -c`` gives state, times, nodes."""
    job = spec(tmp_path, ["sh", "-c", "sleep 1.1; exit 4"])

    async def main() -> tuple[JobOutcome, Any]:
        connector = make_connector(slurm_cluster, tmp_path)
        try:
            outcome = (await run_with(connector, job))[0]
            return outcome, await connector.jobs.lookup_finished(outcome.external_id or "")
        finally:
            await connector.stop()

    outcome, info = asyncio.run(main())
    assert info is not None
    assert info.state == "FAILED"
    assert info.exit_code == 4 == outcome.exit_code
    # the outcome's times are the script's own (its markers), inside Slurm's whole seconds
    assert info.start is not None and info.end is not None
    assert outcome.started is not None and outcome.ended is not None
    assert info.start <= outcome.started < outcome.ended < info.end + 1
    assert info.nodes == outcome.nodes == 1


def test_a_job_that_runs_to_its_end_costs_the_controller_only_its_submission(
    slurm_cluster: Any, tmp_path: Path
) -> None:
    """Completion comes from the jobs' own markers: no squeue, sacct or scontrol per job."""
    jobs = [spec(tmp_path, ["sh", "-c", f"sleep 0.3; exit {i}"], name=f"s{i}", stdout=None)
            for i in range(3)]  # fmt: skip

    async def main() -> tuple[list[JobOutcome], list[str]]:
        connector = make_connector(slurm_cluster, tmp_path)
        commands: list[str] = []
        run = connector.transport.run

        async def counted(argv: list[str], **kwargs: Any) -> tuple[int, str, str]:
            commands.append(argv[0])  # a spy: the real command still runs
            return await run(argv, **kwargs)

        connector.transport.run = counted  # type: ignore[method-assign]
        try:
            outcomes = await asyncio.gather(*(connector.run(j, Started()) for j in jobs))
            return list(outcomes), commands
        finally:
            await connector.stop()

    outcomes, commands = asyncio.run(main())
    assert [o.exit_code for o in outcomes] == [0, 1, 2]
    assert sorted(commands) == ["sbatch", "sbatch", "sbatch"], commands
    for outcome in outcomes:
        assert outcome.started is not None and outcome.ended is not None
        assert 0.3 <= outcome.ended - outcome.started < 5 and outcome.nodes == 1
        assert outcome.node_seconds == pytest.approx(outcome.ended - outcome.started)
    assert "exited with status 2 (Slurm job" in (outcomes[2].message or "")


@pytest.mark.parametrize("submit", ["sbatch", "salloc"])
def test_stop_cancels_jobs_in_flight(slurm_cluster: Any, tmp_path: Path, submit: str) -> None:
    marker = f"sleep 6{uuid.uuid4().int % 1000}.5"
    job = spec(tmp_path, ["sh", "-c", marker])

    async def main() -> BaseException | JobOutcome:
        connector = make_connector(slurm_cluster, tmp_path, submit=submit)
        started = Started()
        task = asyncio.ensure_future(connector.run(job, started))
        await started.wait()
        await connector.stop()
        return (await asyncio.gather(task, return_exceptions=True))[0]

    result = asyncio.run(main())
    assert isinstance(result, JobOutcome) and "CANCELLED" in (result.message or "")
    assert slurm_cluster.active_jobs() == []
    assert not process_alive(marker)
    assert os.path.isdir(tmp_path / "slurm-work")


# -- submit: salloc -----------------------------------------------------------------------


def test_salloc_step_runs_in_its_own_allocation(slurm_cluster: Any, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from stdin\n")
    script = "cat; echo to-stderr >&2; echo $SLURM_CPUS_PER_TASK; sleep 1.2"
    job = spec(tmp_path, ["sh", "-c", script], stdin="in.txt", cores=2)

    async def main() -> tuple[JobOutcome, Started, list[str]]:
        connector = make_connector(slurm_cluster, tmp_path, submit="salloc")
        try:
            outcome, started, _ = await run_with(connector, job)
            return outcome, started, slurm_cluster.active_jobs()
        finally:
            await connector.stop()

    outcome, started, active_after = asyncio.run(main())
    assert outcome.exit_code == 0, outcome.message
    assert outcome.message is None
    assert (tmp_path / "out.txt").read_text() == "from stdin\n2\n"  # --cpus-per-task=2
    assert (tmp_path / "err.txt").read_text() == "to-stderr\n"
    jobid = outcome.external_id or ""
    assert jobid.isdigit() and [c[0] for c in started.calls] == [jobid]
    assert active_after == []  # the allocation ended with the step, not at stop()
    assert batch_flag(slurm_cluster, jobid) == "0"  # an salloc allocation, not a batch job
    record = subprocess.run(
        ["squeue", "-h", "--states=all", f"--jobs={jobid}", "-o", "%S %e %D %j"],
        env={**slurm_cluster.env, "SLURM_TIME_FORMAT": "%s"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert (outcome.started, outcome.ended, outcome.nodes) == (
        float(record[0]),
        float(record[1]),
        int(record[2]),
    )
    assert record[3].startswith("qflow-step-")
    assert outcome.node_seconds is not None and outcome.node_seconds > 0
    assert outcome.node_seconds == pytest.approx(outcome.nodes * (outcome.ended - outcome.started))
    assert list((tmp_path / "slurm-work").iterdir()) == []


def test_salloc_failing_step_returns_its_exit_code(slurm_cluster: Any, tmp_path: Path) -> None:
    job = spec(tmp_path, ["sh", "-c", "echo broken >&2; exit 3"])
    missing = JobSpec(**{**job.__dict__, "name": "gone", "cwd": str(tmp_path / "nope")})

    async def main() -> list[JobOutcome]:
        connector = make_connector(slurm_cluster, tmp_path, submit="salloc")
        try:
            return [(await run_with(connector, j))[0] for j in (job, missing)]
        finally:
            await connector.stop()

    failed, lost = asyncio.run(main())
    assert failed.exit_code == 3
    assert "status 3" in (failed.message or "") and failed.external_id in (failed.message or "")
    assert (tmp_path / "err.txt").read_text() == "broken\n"
    assert lost.exit_code == 1
    assert "cannot enter" in (lost.message or "")
    assert slurm_cluster.active_jobs() == []


def test_salloc_cancel_while_pending_withdraws_the_request(
    slurm_cluster: Any, tmp_path: Path
) -> None:
    job = spec(tmp_path, ["true"])

    async def main() -> tuple[Started, list[str]]:
        connector = make_connector(
            slurm_cluster, tmp_path, submit="salloc", extra=["--begin=now+600"]
        )
        started = Started()
        try:
            task = asyncio.ensure_future(connector.run(job, started))
            for _ in range(100):  # until the request is queued
                await asyncio.sleep(0.05)
                if slurm_cluster.active_jobs():
                    break
            pending = slurm_cluster.active_jobs()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return started, pending
        finally:
            await connector.stop()

    started, pending = asyncio.run(main())
    assert len(pending) == 1, "the salloc request should be pending"
    assert started.calls == []  # never granted
    assert slurm_cluster.active_jobs() == []


def test_salloc_location_runs_mpi_and_multi_task_steps_with_sbatch(
    slurm_cluster: Any, tmp_path: Path
) -> None:
    """Under ``srun`` their own ``srun`` would see one task: they go through sbatch."""
    mpi = spec(tmp_path, ["sh", "-c", "echo $SLURM_PROCID"], name="mpi", mpi_procs=3, cores=1)
    multi = spec(
        tmp_path, ["sh", "-c", "echo $SLURM_NTASKS"], name="multi", stdout="n.txt", stderr="n.err"
    )

    async def main() -> list[JobOutcome]:
        salloc_location = make_connector(slurm_cluster, tmp_path, submit="salloc")
        two_tasks = make_connector(slurm_cluster, tmp_path, submit="salloc", tasks=2)
        try:
            runs = [run_with(salloc_location, mpi), run_with(two_tasks, multi)]
            return [r[0] for r in await asyncio.gather(*runs)]
        finally:
            await salloc_location.stop()
            await two_tasks.stop()

    outcomes = asyncio.run(main())
    assert [o.exit_code for o in outcomes] == [0, 0], [o.message for o in outcomes]
    assert sorted((tmp_path / "out.txt").read_text().split()) == ["0", "1", "2"]
    assert (tmp_path / "n.txt").read_text() == "2\n"
    assert [batch_flag(slurm_cluster, o.external_id or "") for o in outcomes] == ["1", "1"]


# -- login mode: the Slurm commands over SSH ---------------------------------------------


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    try:
        server = start_sshd(tmp_path_factory.mktemp("sshd"))
    except ClusterUnavailable as exc:
        pytest.skip(f"no private sshd on 127.0.0.1: {exc}")
    try:
        yield server
    finally:
        server.stop()


def ssh_connector(
    cluster: Any, server: SshServer, key: Path | None = None, **keys: Any
) -> SlurmConnector:
    config = SlurmConnector.Config(
        connector="slurm",
        slurm_conf=str(cluster.conf),
        login=server.login,
        ssh_port=server.port,
        ssh_key=str(key or server.key),
        ssh_options=[f"UserKnownHostsFile={server.known_hosts}", "StrictHostKeyChecking=yes"],
        **{"partition": "compute", **keys},
    )
    return SlurmConnector("over-ssh", config)


def ssh_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if marker in ln and not ln.startswith("Z")]


def test_login_mode_runs_jobs_over_one_ssh_master(
    slurm_cluster: Any,
    ssh_server: SshServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QFLOW_ORCHESTRATOR_ONLY", "must-not-leak")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ODD": "it's $x"}
    marker = uuid.uuid4().hex
    jobs = [
        spec(tmp_path, ["env", "-0"], name="env", env=env, stdout="env.txt", stderr=None),
        spec(tmp_path, ["sh", "-c", "exit 5"], name="fail", stdout="f.txt", stderr="f.err"),
        spec(tmp_path, ["sh", "-c", f"sleep 1.1; echo {marker}"], name="cap", stdout=None),
    ]

    async def main() -> tuple[list[JobOutcome], str, str, list[str]]:
        connector = ssh_connector(slurm_cluster, ssh_server)
        await connector.start()
        control_dir = connector.transport._control_dir  # type: ignore[attr-defined]
        workdir = connector.workdir or ""
        try:
            sockets = os.listdir(control_dir)
            results = await asyncio.gather(*(run_with(connector, j) for j in jobs))
        finally:
            await connector.stop()
        return [r[0] for r in results], control_dir, workdir, sockets

    outcomes, control_dir, workdir, sockets = asyncio.run(main())
    assert len(sockets) == 1  # one master connection for all the commands
    assert [o.exit_code for o in outcomes] == [0, 5, 0], [o.message for o in outcomes]
    seen = dict(
        item.split("=", 1)
        for item in (tmp_path / "env.txt").read_text().split("\0")
        if item and not item.startswith(("SLURM_", "SLURMD_"))
    )
    assert seen == env  # neither qflow's nor the login node's environment leaks
    assert marker in capsys.readouterr().err
    assert outcomes[2].started is not None and outcomes[2].ended is not None
    assert outcomes[2].started < outcomes[2].ended
    # the default work directory lives in the login user's home and is removed at the end
    assert workdir.startswith("/root/.qflow/slurm/over-ssh-")
    assert not os.path.exists(workdir)
    with contextlib.suppress(OSError):  # the connector's base directory, if now empty
        os.rmdir(os.path.dirname(workdir))
    assert not os.path.exists(control_dir)
    assert ssh_processes(control_dir) == []  # the master connection is gone


def test_login_mode_cancel_and_bad_key(
    slurm_cluster: Any, ssh_server: SshServer, tmp_path: Path
) -> None:
    marker = f"sleep 5{uuid.uuid4().int % 1000}.5"
    job = spec(tmp_path, ["sh", "-c", marker])
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)

    async def main() -> str:
        refused = ssh_connector(slurm_cluster, ssh_server, key=stranger)
        with pytest.raises(TransportError, match="cannot open SSH"):
            await refused.start()
        await refused.stop()
        connector = ssh_connector(slurm_cluster, ssh_server, workdir=str(tmp_path / "w"))
        started = Started()
        try:
            task = asyncio.ensure_future(connector.run(job, started))
            jobid = await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return jobid, slurm_cluster.active_jobs()  # before stop(): the cancel did it all
        finally:
            await connector.stop()

    jobid, active_after_cancel = asyncio.run(main())
    assert jobid and jobid not in active_after_cancel  # (an earlier test's job may complete)
    assert_cancelled(slurm_cluster, jobid, marker)


def orphan(kind: str, external_id: str | None = None, **handle: str) -> Resource:
    """A resource as a crashed run's journal leaves it (intended, never marked ended)."""
    return Resource(f"{uuid.uuid4().hex[:6]}-1", kind, "test-slurm", handle, external_id)


def test_cancel_orphan_of_a_crashed_run(slurm_cluster: Any, tmp_path: Path) -> None:
    """``qflow run --resume`` cancels what a crashed run left: a job submitted by another
    connector instance (here: by sbatch directly), a held allocation by its id or by its name
    (a request still pending), and a job id Slurm never knew."""
    marker = f"sleep 4{uuid.uuid4().int % 1000}.25"
    jobid = slurm_cluster.run(
        "sbatch", "--parsable", "-p", "compute", "-o", "/dev/null", "--wrap", marker
    ).strip()
    slurm_cluster.run("salloc", "--no-shell", "-p", "compute", "-N1", "--job-name=orphan-held")
    granted = slurm_cluster.run("squeue", "-h", "--name=orphan-held", "-o", "%i %N").split()
    pending = f"qflow-held-{uuid.uuid4().hex[:8]}"
    slurm_cluster.run("sbatch", "-p", "compute", "--begin=now+600", f"--job-name={pending}",
                      "-o", "/dev/null", "--wrap", "true")  # fmt: skip

    async def main() -> None:
        connector = make_connector(slurm_cluster, tmp_path)
        try:
            await connector.cancel_orphan(orphan("execution", jobid))
            # a step of a held allocation (JOBID@NODE): the allocation itself goes
            await connector.cancel_orphan(orphan("execution", f"{granted[0]}@{granted[1]}"))
            await connector.cancel_orphan(orphan("slurm-allocation", name=pending))
            await connector.cancel_orphan(orphan("execution", "999999"))  # unknown: no error
            with pytest.raises(SlurmError, match="not a Slurm job id"):
                await connector.cancel_orphan(orphan("execution", "12; rm -rf /"))
            with pytest.raises(SlurmError, match="not a job name qflow gives"):
                await connector.cancel_orphan(orphan("slurm-allocation", name="qflow-a,other"))
            with pytest.raises(SlurmError, match="cannot end a 'qpu-task' resource"):
                await connector.cancel_orphan(orphan("qpu-task", "7"))
        finally:
            await connector.stop()

    asyncio.run(main())
    assert slurm_cluster.active_jobs() == []
    assert not process_alive(marker)


@pytest.mark.parametrize("submit", ["sbatch", "salloc"])
def test_cancel_orphan_finds_a_step_by_its_execution_id(
    slurm_cluster: Any, tmp_path: Path, submit: str
) -> None:
    """A crash before the job's id was journalled: the resumed run's clean-up (another
    connector) finds the running job, and a request still pending, by the name derived from
    the execution id alone, and returns once Slurm reports them ended."""
    marker = f"sleep 5{uuid.uuid4().int % 1000}.75"
    running = orphan("execution")
    queued = orphan("execution")
    job = spec(tmp_path, ["sh", "-c", marker])
    later = spec(tmp_path, ["true"], name="later", stdout="later.out", stderr="later.err")

    async def main() -> tuple[list[str], list[BaseException | JobOutcome]]:
        crashed = make_connector(slurm_cluster, tmp_path, submit=submit)
        crashed_later = make_connector(
            slurm_cluster, tmp_path, submit=submit, extra=["--begin=now+600"]
        )
        resumed = make_connector(slurm_cluster, tmp_path)
        started = Started()
        runs = [
            asyncio.ensure_future(crashed.run(replace(job, execution_id=running.id), started)),
            asyncio.ensure_future(
                crashed_later.run(replace(later, execution_id=queued.id), lambda _: None)
            ),
        ]
        try:
            await started.wait()
            for _ in range(100):  # until both are known to Slurm
                if len(slurm_cluster.active_jobs()) == 2:
                    break
                await asyncio.sleep(0.05)
            await resumed.cancel_orphan(running)
            await resumed.cancel_orphan(queued)
            states = [
                slurm_cluster.run("squeue", "-h", "--states=all", f"--name={name}", "-o", "%T")
                for name in (job_name(running.id), job_name(queued.id))
            ]
            return states, await asyncio.gather(*runs, return_exceptions=True)
        finally:
            for connector in (crashed, crashed_later, resumed):
                await connector.stop()

    states, results = asyncio.run(main())
    assert [s.split() for s in states] == [["CANCELLED"], ["CANCELLED"]]
    assert not process_alive(marker)
    assert slurm_cluster.active_jobs() == []
    assert isinstance(results[0], JobOutcome) and results[0].exit_code != 0


def test_held_allocation_of_a_killed_run_is_journalled_and_ended(
    slurm_cluster: Any, tmp_path: Path
) -> None:
    """A held allocation is journalled before salloc asks for it: after a real crash (SIGKILL
    of a qflow stand-in mid-step) the journal still holds it, and cancel_orphan frees it."""
    marker = f"sleep 9{uuid.uuid4().int % 1000}.5"
    journal = tmp_path / "journal.jsonl"
    config = {"connector": "slurm", "partition": "compute", "slurm_conf": str(slurm_cluster.conf),
              "workdir": str(tmp_path / "work"), "allocation": "held", "held_nodes": 1}  # fmt: skip
    step = crash_once_started(config, journal, tmp_path, ["sh", "-c", marker],
                              lambda: process_alive(marker))  # fmt: skip
    jobid = step.split("@")[0]
    alive = read_journal(journal).alive
    assert sorted(r.kind for r in alive) == ["execution", "slurm-allocation"]
    (allocation,) = [r for r in alive if r.kind == "slurm-allocation"]
    assert allocation.external_id == jobid
    assert allocation.handle["name"].startswith("qflow-held-")
    assert slurm_cluster.active_jobs() == [jobid]  # the crash left it running
    assert process_alive(marker)

    async def main() -> None:
        resumed = make_connector(slurm_cluster, tmp_path)
        try:
            await resumed.cancel_orphan(allocation)
        finally:
            await resumed.stop()

    asyncio.run(main())
    assert slurm_cluster.run("squeue", "-h", f"--name={allocation.handle['name']}") == ""
    assert slurm_cluster.active_jobs() == []
    assert not process_alive(marker)
