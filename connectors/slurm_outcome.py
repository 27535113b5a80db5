"""What a finished Slurm step reports: its :class:`~qflow.connector.JobOutcome`.

Exit codes (``JobOutcome.exit_code``):

* the job ran to its end (``COMPLETED``/``FAILED``): the command's exit status as the batch
  shell saw it (``$?``; a command killed by signal N gives 128+N, as in any shell script),
  read from the exit-status file the batch script writes;
* Slurm ended the job: ``-15`` (SIGTERM, the signal Slurm terminates jobs with) for
  ``TIMEOUT``, ``CANCELLED``, ``PREEMPTED`` and ``DEADLINE``; ``-9`` for ``NODE_FAIL``,
  ``BOOT_FAIL`` and ``OUT_OF_MEMORY``. ``message`` then gives Slurm's state and reason.

Start, end and node count: for a job that ran to its end, from its own markers (the batch
script's start and end, to the microsecond, and ``SLURM_JOB_NUM_NODES``), so no controller
request is needed; for a job Slurm ended, from Slurm's records (whole seconds). Output a step
has no file for goes to qflow's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

from qflow.connector import JobOutcome
from qflow.connectors.slurm_jobs import (
    RAN_STATES,
    SIGKILL_STATES,
    SIGTERM_STATES,
    TERMINAL_STATES,
    JobInfo,
)
from qflow.connectors.slurm_script import Plan
from qflow.connectors.transport import Transport

EXIT_FILE_WAIT_S = 1.0
"""How long a missing exit-status file is waited for (shared filesystems lag)."""


async def batch_outcome(
    transport: Transport, jobid: str, info: JobInfo | None, plan: Plan
) -> JobOutcome:
    """A batch job's outcome: the exit code from its exit-status file, or from Slurm's state
    if Slurm ended it; times and nodes from Slurm's final record ``info`` (whole seconds)."""
    rc = await read_exit_file(
        transport, plan.rc_file, wait=info is None or info.state in RAN_STATES
    )
    await copy_capture(transport, plan)
    if info is None:
        return JobOutcome(
            exit_code=rc if rc is not None else 1,
            message=None
            if rc == 0
            else f"Slurm job {jobid} left squeue, sacct -c and scontrol without a final state",
            external_id=jobid,
        )
    started = info.start if info.ran and info.start else None
    ended = info.end if started is not None and info.end else None
    if started is not None and ended is not None and ended < started:
        ended = started
    nodes = info.nodes if started is not None else 0
    node_seconds = nodes * (ended - started) if started is not None and ended is not None else 0.0
    exit_code, message = await exit_and_message(transport, jobid, info, rc, plan)
    return JobOutcome(
        exit_code=exit_code,
        message=message,
        started=started,
        ended=ended,
        nodes=nodes,
        node_seconds=float(node_seconds),
        external_id=jobid,
    )


async def exit_and_message(
    transport: Transport, jobid: str, info: JobInfo, rc: int | None, plan: Plan
) -> tuple[int, str | None]:
    """The step's exit code and message from Slurm's final state and the exit status the
    script wrote (``rc``, None if it wrote none)."""
    reason = f", reason {info.reason}" if info.reason and info.reason != "None" else ""
    where = f" on {info.nodelist}" if info.nodelist else ""
    if info.state in SIGTERM_STATES or info.state in SIGKILL_STATES:
        code = -15 if info.state in SIGTERM_STATES else -9
        if info.state == "TIMEOUT":
            limit = f" of {plan.time_limit} min" if plan.time_limit else ""
            what = f"exceeded its time limit{limit} and was killed by Slurm"
        elif info.state == "CANCELLED":
            what = "was cancelled (scancel)"
        elif info.state == "NODE_FAIL":
            what = "was lost with a failed node"
        elif info.state == "OUT_OF_MEMORY":
            what = "ran out of memory"
        else:
            what = "was ended by Slurm"
        return code, f"Slurm job {jobid}{where} {what} (state {info.state}{reason})"
    if rc == 0:
        return 0, None
    log = await log_tail(transport, plan)
    log = f"; batch log: {log}" if log else ""
    if rc is None:
        code = info.exit_code if info.exit_code is not None else 1
        if info.state == "FAILED" and code == 0:
            code = 1
        return code, (
            f"Slurm job {jobid}{where} ended {info.state}{reason} without writing its exit "
            f"status to {plan.rc_file}{log}"
        )
    return rc, f"exited with status {rc} (Slurm job {jobid}{where}, state {info.state}){log}"


async def log_tail(transport: Transport, plan: Plan, limit: int = 600) -> str:
    """The end of the job's Slurm log on one line, for a failed step's message."""
    data = await transport.read(plan.log_file)
    text = (data or b"").decode(errors="replace").strip()
    return " | ".join(text[-limit:].splitlines())


async def read_exit_file(transport: Transport, path: str, *, wait: bool) -> int | None:
    """The exit status the script wrote; None if there is none (after ``EXIT_FILE_WAIT_S``
    with ``wait``: the file may lag on a shared filesystem)."""
    deadline = time.monotonic() + (EXIT_FILE_WAIT_S if wait else 0)
    while True:
        marker = parse_marker(await transport.read(path))
        if marker:
            with contextlib.suppress(ValueError):
                return int(marker[0])
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.05)


def parse_marker(data: bytes | None) -> list[str]:
    """The fields of a marker file; [] while it is missing or not completely written (the
    script writes one line: a line without its newline is still being written)."""
    text = (data or b"").decode(errors="replace")
    return text.split() if text.endswith("\n") else []


def _time(field: str) -> float | None:
    """A marker's time (``$EPOCHREALTIME``: its decimal point follows the job's locale)."""
    try:
        return float(field.replace(",", "."))
    except ValueError:
        return None


def held_outcome(
    jobid: str, code: int, message: str | None, span: tuple[float, float], nodes: int
) -> JobOutcome:
    """A job's outcome when its nodes were held for ``span`` (start, end): nodes × that."""
    start, end = span
    return JobOutcome(
        exit_code=code,
        message=message,
        started=start,
        ended=end,
        nodes=nodes,
        node_seconds=float(nodes * (end - start)),
        external_id=jobid,
    )


async def marker_outcome(transport: Transport, jobid: str, plan: Plan) -> JobOutcome | None:
    """A batch job's outcome from its own markers, once its exit marker is there: the exit
    status, its start and end as the script saw them, its nodes. None if a marker cannot be
    read (then Slurm's record decides)."""
    deadline = time.monotonic() + EXIT_FILE_WAIT_S
    while True:
        ended = parse_marker(await transport.read(plan.rc_file))
        started = parse_marker(await transport.read(plan.started_file))
        if len(ended) >= 2 and len(started) >= 2:
            break
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.05)
    try:
        code, nodes = int(ended[0]), int(started[1])
    except ValueError:
        return None
    start, end = _time(started[0]), _time(ended[1])
    if start is None or end is None:
        return None
    end = max(start, end)
    await copy_capture(transport, plan)
    message = None
    if code != 0:
        where = f" on {started[2]}" if len(started) > 2 else ""
        log = await log_tail(transport, plan)
        message = f"exited with status {code} (Slurm job {jobid}{where})" + (
            f"; batch log: {log}" if log else ""
        )
    return held_outcome(jobid, code, message, (start, end), nodes)


async def collect(transport: Transport, plan: Plan) -> None:
    """After a step ran in an allocation: its captured output, then its files go."""
    await copy_capture(transport, plan)
    await transport.remove([p for p in (plan.rc_file, plan.started_file, plan.capture_file) if p])


async def copy_capture(transport: Transport, plan: Plan) -> None:
    """Output with no file of its own goes to qflow's stderr, as with the local connector."""
    if plan.capture_file is None:
        return
    data = await transport.read(plan.capture_file)
    if data:
        sys.stderr.write(data.decode(errors="replace"))
        sys.stderr.flush()


async def salloc_outcome(
    transport: Transport,
    jobid: str,
    plan: Plan,
    granted: float,
    ran: tuple[int | None, int, str],
    ended_by_slurm: JobInfo | None,
    final: JobInfo | None,
) -> JobOutcome:
    """The exit code from the exit-status file (``ran``: it, srun's status and messages);
    times and nodes from Slurm's record of the allocation (whole seconds), as for a batch
    job; ``ended_by_slurm``: the allocation's state when the script did not finish."""
    code, srun_rc, srun_err = ran
    started = final.start if final and final.start else granted
    ended = max(started, final.end if final and final.end else time.time())
    nodes = final.nodes if final and final.nodes else 1
    where = f" on {final.nodelist}" if final and final.nodelist else ""
    detail = f": {srun_err[-300:]}" if srun_err else ""
    message: str | None = None
    if code is None and ended_by_slurm and ended_by_slurm.state in TERMINAL_STATES:
        code, message = await exit_and_message(transport, jobid, ended_by_slurm, None, plan)
    elif code is None:
        code = srun_rc or 1
        message = (
            f"srun in Slurm job {jobid}{where} ended with status {srun_rc} before the step "
            f"wrote its exit status{detail}"
        )
    elif code != 0:
        message = f"exited with status {code} (Slurm job {jobid}{where}, salloc){detail}"
    return held_outcome(jobid, code, message, (started, ended), nodes)
