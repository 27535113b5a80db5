"""The ``local`` connector: step commands as subprocesses of this host.

Each command gets its own process group so that cancelling a step (Ctrl-C, a failed sibling)
kills everything it started, not only the direct child. Redirections follow cwltool's
``_job_popen``: stdin from the staged file or an immediately closed pipe, stdout/stderr to
their files or to qflow's own stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import IO, Any

from qflow.connector import (
    ClassicalLocationConfig,
    Connector,
    JobOutcome,
    JobSpec,
    JobStartedCallback,
)
from qflow.rundir.journal import Resource

KILL_GRACE_S = 2.0
"""Time a process group gets between SIGTERM and SIGKILL."""
EXECUTION_TAG = "QFLOW_EXECUTION_ID"
"""Set in every local step's environment to its execution id: after a crash, its processes
are found by it even if the crash came before their pid was journalled."""


def _open_redirections(job: JobSpec) -> tuple[Any, Any, Any]:
    stdin: Any = open(job.stdin_path, "rb") if job.stdin_path else subprocess.DEVNULL  # noqa: SIM115
    stdout: Any = open(job.stdout_path, "wb") if job.stdout_path else sys.stderr  # noqa: SIM115
    stderr: Any = open(job.stderr_path, "wb") if job.stderr_path else sys.stderr  # noqa: SIM115
    return stdin, stdout, stderr


def _close(*files: IO[Any] | int) -> None:
    for f in files:
        if not isinstance(f, int) and f is not sys.stderr:
            f.close()


def kill_process_group(pid: int, sig: int) -> None:
    """Signal a whole process group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a child without blocking the loop or a watcher thread (Linux pidfd)."""
    if proc.poll() is not None:
        return proc.returncode
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(proc.pid)
    try:
        exited = loop.create_future()
        loop.add_reader(fd, _set_once, exited)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return proc.wait()


async def terminate_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it outlives the grace period, reap it."""
    kill_process_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(wait_exit(proc), KILL_GRACE_S)
    except TimeoutError:
        kill_process_group(proc.pid, signal.SIGKILL)
        await wait_exit(proc)
    # children that ignored SIGTERM but whose leader exited
    kill_process_group(proc.pid, signal.SIGKILL)


def tagged_process_groups(execution_id: str) -> set[int]:
    """Process groups with a process whose environment carries ``execution_id``'s tag."""
    needle = f"\0{EXECUTION_TAG}={execution_id}\0".encode()
    groups: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as environ:
                if needle in b"\0" + environ.read() + b"\0":
                    groups.add(os.getpgid(int(entry.name)))
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile, or not ours to read
    return groups


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def end_process_groups(groups: set[int]) -> None:
    """SIGTERM groups that are not our children, SIGKILL what outlives the grace period."""
    for pgid in groups:
        kill_process_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    while any(_group_alive(g) for g in groups) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for pgid in groups:
        kill_process_group(pgid, signal.SIGKILL)


class LocalConnector(Connector[ClassicalLocationConfig]):
    """Runs step commands on the orchestrator host."""

    Config = ClassicalLocationConfig
    outlives_host = False

    async def cancel_orphan(self, resource: Resource) -> None:
        """End the process groups a crashed run left: by pid if it still leads its session,
        and every group whose processes carry the execution's tag."""
        groups = tagged_process_groups(resource.id)
        if resource.external_id and resource.external_id.isdigit():
            pid = int(resource.external_id)
            with contextlib.suppress(ProcessLookupError):
                if os.getsid(pid) == pid:  # else the pid was reused by an unrelated process
                    groups.add(pid)
        await end_process_groups(groups)

    async def run(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        stdin, stdout, stderr = _open_redirections(job)
        try:
            proc = subprocess.Popen(
                job.command,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env={**job.env, EXECUTION_TAG: job.execution_id} if job.execution_id else job.env,
                cwd=job.cwd,
                close_fds=True,
                start_new_session=True,
            )
        finally:
            _close(stdin, stdout, stderr)
        started = time.time()
        on_started(str(proc.pid))
        limit = job.resources.time_limit_s
        message = None
        try:
            if limit:
                try:
                    await asyncio.wait_for(wait_exit(proc), limit)
                except TimeoutError:
                    message = f"exceeded its time limit of {limit} s and was terminated"
                    await terminate_group(proc)
            else:
                await wait_exit(proc)
        except asyncio.CancelledError:
            await terminate_group(proc)
            raise
        ended = time.time()
        nodes = self.config.nodes
        return JobOutcome(
            exit_code=proc.returncode if proc.returncode is not None else -1,
            message=message,
            started=started,
            ended=ended,
            nodes=nodes,
            node_seconds=nodes * (ended - started),
            external_id=str(proc.pid),
        )
