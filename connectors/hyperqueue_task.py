"""The HyperQueue task of a step: the wrapper it runs and the control directory it obeys.

The task does not run the step's command directly but a small Python wrapper,
hyperqueue_wrapper.py (standard library only, never imports qflow), copied into a per-job
control directory under ``workdir`` and run from there with ``python -I -S wrapper.py
CONTROL_DIR``. It reads the step from the directory's ``spec.json``, then:

1. writes ``pid`` (host and wrapper pid), then checks for a ``cancel`` file (a step cancelled
   while its task was still queued removes its control directory and exits here, without
   running anything);
2. starts the command in its own process group with the step's environment (plus HyperQueue's
   ``HQ_*`` allocation variables but ``HQ_ACCESS_KEY``; nothing else of the worker's
   environment), working directory and redirections, and writes ``started`` (time and
   process group id);
3. waits for the command, every ``poll_interval`` checking for a ``cancel`` file and the time
   limit; either ends the process group (SIGTERM, 2 s grace, SIGKILL) as the local connector
   does;
4. writes ``exit`` (exit status exactly as ``subprocess`` reports it, negative for a signal,
   start and end time, why it was ended) and exits with the command's status, so HyperQueue
   shows failed steps as failed tasks.

HyperQueue signals only a task's main process (measured: SIGINT when its server stops), not
its process group. The wrapper turns SIGINT/SIGTERM/SIGHUP into ending the command's group;
a forked guardian process, in a session of its own, ends the group if the wrapper itself is
killed outright (SIGKILL), so a lost task never leaves the command behind.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from qflow.connector import JobOutcome, JobSpec
from qflow.connectors.local import kill_process_group

KILL_GRACE_S = 2.0
"""Time a process group gets between SIGTERM and SIGKILL (as the local connector)."""
CAPTURE = "capture"
"""File of the control directory that output without a file of its own goes to."""

WRAPPER_FILE = "wrapper.py"
"""The task wrapper's copy in each control directory (the worker runs that copy)."""
WRAPPER_SOURCE = Path(__file__).with_name("hyperqueue_wrapper.py").read_bytes()
"""hyperqueue_wrapper.py: standard library only, it never imports qflow."""


def write_spec(
    control: Path, job: JobSpec, env: dict[str, str], time_limit: int | None, poll: float
) -> None:
    """Write the wrapper (:data:`WRAPPER_FILE`) and its ``spec.json`` into ``control``: the
    step's command, directory, environment (``env``), redirections and time limit, and how
    often the wrapper checks for ``cancel``.

    The wrapper travels with the job's control files rather than from qflow's installation,
    so a worker on another host runs it as soon as it sees the control directory.
    """
    (control / WRAPPER_FILE).write_bytes(WRAPPER_SOURCE)
    spec = {
        "command": list(job.command),
        "cwd": job.cwd,
        "env": env,
        "stdin": job.stdin_path,
        "stdout": job.stdout_path,
        "stderr": job.stderr_path,
        "capture": str(control / CAPTURE),
        "time_limit": time_limit,
        "poll": poll,
        "grace": KILL_GRACE_S,
    }
    (control / "spec.json").write_text(json.dumps(spec))


def build_job(job: JobSpec, control: Path, cpus: int, python: str) -> Any:
    """The one-task ``hyperqueue.Job`` that runs the wrapper on ``control`` with ``python``."""
    from hyperqueue import Job
    from hyperqueue.ffi.protocol import ResourceRequest

    hq_job = Job(name=job.name, max_fails=1)
    hq_job.program(
        [python, "-I", "-S", str(control / WRAPPER_FILE), str(control)],
        cwd=str(control),
        env={},
        stdout=None,
        stderr=str(control / "wrapper.err"),
        name=job.name,
        resources=ResourceRequest(cpus=cpus),
        crash_limit=1,
    )
    return hq_job


def task_outcome(
    job: JobSpec, job_id: int, record: dict[str, Any], time_limit: int | None, nodes: int
) -> JobOutcome:
    """The step's outcome from the wrapper's ``exit`` record (or the connector's record of a
    task lost without one); ``nodes`` as the location accounts them per step."""
    started = record.get("started")
    ended = record.get("ended") if started is not None else None
    host = record.get("host")
    where = f" on {host}" if host else ""
    reason = record.get("reason")
    code = record.get("exit_code")
    message: str | None = None
    if record.get("error"):
        code = code if code is not None else 1
        if reason == "lost":
            message = f"HyperQueue job {job_id}{where}: {record['error']}"
        else:
            message = (
                f"cannot run {job.command[0] if job.command else '(empty command)'!r}"
                f"{where} (HyperQueue job {job_id}): {record['error']}"
            )
    elif reason == "timeout":
        message = f"exceeded its time limit of {time_limit} s and was terminated"
    elif reason == "cancelled":
        code = code if code is not None else -15
        message = f"HyperQueue job {job_id} was cancelled"
    elif reason == "signal":
        sig = record.get("signal")
        if isinstance(sig, int):
            with contextlib.suppress(ValueError):
                sig = signal.Signals(sig).name
        message = (
            f"HyperQueue job {job_id}{where} was ended by HyperQueue ({sig} to its task, e.g. "
            "its worker or server stopped)"
        )
    if code is None:
        code = 1
    node_seconds = (
        nodes * max(0.0, ended - started) if started is not None and ended is not None else 0.0
    )
    return JobOutcome(
        exit_code=int(code),
        message=message,
        started=started,
        ended=ended,
        nodes=nodes,
        node_seconds=node_seconds,
        external_id=str(job_id),
    )


class Forwarder:
    """Copies captured output (steps without stdout/stderr files) to qflow's stderr."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offset = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def pump(self, final: bool = False) -> None:
        """Copy what was written since the last call (``final``: flush a cut character)."""
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            data = b""
        self.offset += len(data)
        text = self.decoder.decode(data, final=final)
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()


def kill_task_here(control: Path) -> bool:
    """SIGKILL a task's command group, wrapper and guardian if the task runs on this host;
    False if it runs elsewhere.

    The group (from ``started``) is killed only while the wrapper or its guardian still runs:
    they are found by their command line (which ends with the control directory), so a
    process group id reused since a crash is never hit.
    """
    pid = read_json(control / "pid") or {}
    if pid.get("host") != socket.gethostname():
        return False
    watchers = _wrapper_processes(control)
    started = read_json(control / "started") or {}
    if watchers and "pgid" in started:
        kill_process_group(int(started["pgid"]), signal.SIGKILL)
    for watcher in watchers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(watcher, signal.SIGKILL)
    return True


def _wrapper_processes(control: Path) -> list[int]:
    """Pids on this host of the task wrapper of ``control`` and of its forked guardian."""
    tail = b"\0" + os.fsencode(control) + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
            if cmdline.read().endswith(tail):
                found.append(int(entry.name))
    return found


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
