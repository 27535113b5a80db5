"""Slurm's records of a location's jobs, and ending jobs.

:class:`SlurmJobs` asks ``squeue`` (jobs the controller still holds, finished ones for
``MinJobAge`` seconds), then ``sacct -c`` (the jobcomp file) and ``scontrol show job`` for
jobs that left it, and turns their fields into :class:`JobInfo` records: Slurm's state and
reason, start and end (whole seconds), nodes and exit status. Ending jobs is ``scancel`` by
id or by name followed by a bounded wait until Slurm reports them ended, the same for a
cancelled step, a released allocation and a crashed run's orphans (:func:`orphan_handles`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time

from qflow.connectors.slurm_script import job_name
from qflow.connectors.slurm_transport import QUERY_ENV, SlurmError
from qflow.connectors.transport import Transport
from qflow.rundir.journal import Resource

_logger = logging.getLogger("qflow.connectors.slurm")

CANCEL_WAIT_S = 30.0
"""Longest wait, after ``scancel``, for Slurm to report the job ended."""
RESCANCEL_S = 1.0
"""While a cancelled job is still alive, ``scancel`` is repeated this often (a request the
controller missed, a job a crashed run's ``sbatch`` submitted after the first ``scancel``)."""

SIGTERM_STATES = frozenset({"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE"})
"""Slurm ends these jobs with SIGTERM (then SIGKILL): reported as exit code -15."""
SIGKILL_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY"})
"""Jobs lost with their node or killed for memory: reported as exit code -9."""
RAN_STATES = frozenset({"COMPLETED", "FAILED"})
"""The batch script ran to its end: the exit-status file tells the command's status."""
TERMINAL_STATES = SIGTERM_STATES | SIGKILL_STATES | RAN_STATES | {"REVOKED"}
STARTED_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING"})

_SQUEUE_FIELDS = ("JobID", "State", "Reason", "StartTime", "EndTime", "NumNodes", "exit_code")
_SQUEUE_FORMAT = ",".join(f"{f}:|" for f in _SQUEUE_FIELDS) + ",NodeList:"
_SACCT_FIELDS = "JobID,State,Start,End,NNodes,ExitCode,NodeList"


@dataclasses.dataclass
class JobInfo:
    """A job's record as Slurm reports it."""

    state: str
    reason: str
    start: float | None
    end: float | None
    nodes: int
    exit_code: int | None
    nodelist: str

    @property
    def ran(self) -> bool:
        """True when the job got nodes and started (a job cancelled while pending did not)."""
        return bool(self.start) and self.nodelist not in ("", "(null)", "None assigned")


class SlurmJobs:
    """Slurm's view of one location's jobs, through its transport."""

    def __init__(self, transport: Transport, location: str, poll_interval: float) -> None:
        self.transport = transport
        self.location = location
        self.poll_interval = max(poll_interval, 0.05)
        """Between two ``squeue`` calls while waiting for jobs to end."""

    async def squeue(
        self, ids: list[str] | None = None, *, name: str | None = None
    ) -> dict[str, JobInfo]:
        """Slurm's records of the jobs ``ids`` (or of the jobs named ``name``; neither: all of
        this user's jobs), finished ones too while the controller keeps them (``MinJobAge``)."""
        which = f"--jobs={','.join(ids)}" if ids else f"--name={name}" if name else "--me"
        rc, out, err = await self.transport.run(
            ["squeue", "--noheader", "--states=all", which, f"--Format={_SQUEUE_FORMAT}"],
            env=QUERY_ENV,
        )
        if rc != 0:
            if "Invalid job id" in err:  # a single id squeue no longer knows
                return {}
            raise SlurmError(f"squeue failed: {err.strip() or f'exit {rc}'}")
        infos: dict[str, JobInfo] = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) < len(_SQUEUE_FIELDS) + 1:
                continue
            jobid, state, reason, start, end, nodes, raw = (p.strip() for p in parts[:7])
            infos[jobid] = JobInfo(
                state=state.split()[0] if state else "UNKNOWN",
                reason=reason,
                start=_epoch(start),
                end=_epoch(end),
                nodes=_int(nodes),
                exit_code=_decode_wait_status(raw),
                nodelist="|".join(parts[7:]).strip(),
            )
        return infos

    async def listed(self, ids: list[str]) -> list[str]:
        """Which of ``ids`` squeue still lists by default (pending, running, completing)."""
        if not ids:
            return []
        rc, out, err = await self.transport.run(
            ["squeue", "--noheader", "--format=%i", f"--jobs={','.join(ids)}"]
        )
        if rc != 0:
            if "Invalid job id" in err:
                return []
            raise SlurmError(f"squeue failed: {err.strip() or f'exit {rc}'}")
        return [jobid for jobid in out.split() if jobid in ids]

    async def lookup_finished(self, jobid: str) -> JobInfo | None:
        """The final record of a job that left ``squeue``: ``sacct -c``, then ``scontrol``."""
        rc, out, _ = await self.transport.run(
            ["sacct", "-c", "-n", "-P", "-j", jobid, "-o", _SACCT_FIELDS], env=QUERY_ENV
        )
        if rc == 0:
            for line in reversed(out.splitlines()):
                parts = line.split("|")
                if len(parts) >= 7 and parts[0].strip() == jobid:
                    return JobInfo(
                        state=parts[1].split()[0] if parts[1].strip() else "UNKNOWN",
                        reason="",
                        start=_epoch(parts[2]),
                        end=_epoch(parts[3]),
                        nodes=_int(parts[4]),
                        exit_code=_decode_exit_pair(parts[5]),
                        nodelist=parts[6].strip(),
                    )
        rc, out, _ = await self.transport.run(
            ["scontrol", "show", "job", "--oneliner", jobid], env=QUERY_ENV
        )
        if rc == 0 and out.strip():
            fields = dict(tok.split("=", 1) for tok in out.split() if "=" in tok[1:])
            state = fields.get("JobState", "UNKNOWN")
            if state in TERMINAL_STATES:
                return JobInfo(
                    state=state,
                    reason=fields.get("Reason", ""),
                    start=_epoch(fields.get("StartTime", "")),
                    end=_epoch(fields.get("EndTime", "")),
                    nodes=_int(fields.get("NumNodes", "").split("-")[0]),
                    exit_code=_decode_exit_pair(fields.get("ExitCode", "")),
                    nodelist=fields.get("NodeList", ""),
                )
        return None

    async def scancel(self, ids: list[str], name: str | None = None) -> None:
        """``scancel`` jobs by id, and every job named ``name`` (one call each: given both,
        scancel would only cancel the ids that also have that name)."""
        commands = ([ids] if ids else []) + ([[f"--name={name}"]] if name else [])
        for argv in commands:
            rc, _, err = await self.transport.run(["scancel", *argv])
            quiet = ("already completing or completed", "Invalid job id")
            if rc != 0 and not any(q in err for q in quiet):
                _logger.warning("scancel %s: %s", " ".join(argv), err.strip())

    async def end_jobs(self, ids: list[str], name: str | None = None) -> dict[str, JobInfo]:
        """``scancel`` the jobs ``ids`` and every job named ``name``, then wait until Slurm shows
        none of them alive: their last records (a job that already left squeue has none).

        Raises :class:`SlurmError` if one is still alive after ``CANCEL_WAIT_S``.
        """
        await self.scancel(ids, name)
        deadline = time.monotonic() + CANCEL_WAIT_S
        rescancel_at = time.monotonic() + RESCANCEL_S
        seen: dict[str, JobInfo] = {}
        alive = list(ids)
        while True:
            with contextlib.suppress(SlurmError):  # a failed squeue: ask again
                infos = await self.squeue(ids) if ids else {}
                if name:
                    infos.update(await self.squeue(name=name))
                seen.update(infos)
                alive = [
                    jobid for jobid, info in infos.items() if info.state not in TERMINAL_STATES
                ]
                if not alive:  # a final state can show before the job stops completing
                    alive = await self.listed(list(infos))
                if not alive:
                    return seen
            now = time.monotonic()
            if now >= deadline:
                named = f" (named {name})" if name else ""
                raise SlurmError(
                    f"location {self.location}: Slurm job(s) {', '.join(alive) or '?'}{named} "
                    f"still not ended {CANCEL_WAIT_S:.0f} s after scancel; check them with "
                    "squeue and cancel them by hand (scancel)"
                )
            if now >= rescancel_at:
                await self.scancel(alive)
                rescancel_at = now + RESCANCEL_S
            await asyncio.sleep(self.poll_interval)


_ORPHAN_ID = re.compile(r"(\d+(?:[_+]\d+)?)(?:@[\w.\-\[\],]+)?")
_ORPHAN_NAME = re.compile(r"qflow-[A-Za-z0-9_.-]+")


def orphan_handles(resource: Resource) -> tuple[str, list[str]]:
    """The job name and ids by which a journalled resource is found (a step of a held
    allocation, ``JOBID@NODE``, by its allocation's id)."""
    if resource.kind == "execution":
        name = job_name(resource.id)
    elif resource.kind == "slurm-allocation":
        name = str(resource.handle.get("name", ""))
    else:
        raise SlurmError(
            f"{resource.describe()}: a slurm location cannot end a {resource.kind!r} resource "
            "(only executions and slurm-allocations); end it with the connector that made it"
        )
    if not _ORPHAN_NAME.fullmatch(name):  # "," would make scancel --name match other jobs
        raise SlurmError(f"{resource.describe()}: {name!r} is not a job name qflow gives")
    if not resource.external_id:
        return name, []
    match = _ORPHAN_ID.fullmatch(resource.external_id)
    if match is None:
        raise SlurmError(f"{resource.external_id!r} is not a Slurm job id (nor JOBID@NODE)")
    return name, [match.group(1)]


def _epoch(text: str) -> float | None:
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return float(value) if value > 0 else None


def _int(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0


def _decode_wait_status(text: str) -> int | None:
    """squeue's ``exit_code``: a raw wait status (768 = exit 3; 15 = killed by SIGTERM)."""
    text = text.strip()
    if not text.isdigit():
        return _decode_exit_pair(text)
    status = int(text)
    if status & 0x7F:
        return -(status & 0x7F)
    return (status >> 8) & 0xFF


def _decode_exit_pair(text: str) -> int | None:
    """sacct/scontrol ``ExitCode``: ``code:signal`` (``3:0``, ``0:15``)."""
    match = re.match(r"^\s*(\d+):(\d+)\s*$", text or "")
    if not match:
        return None
    code, sig = int(match.group(1)), int(match.group(2))
    return -sig if sig else code
