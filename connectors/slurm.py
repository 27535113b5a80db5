"""The ``slurm`` connector: every step execution is one Slurm job.

Strategy "hold nodes only while the step runs" (``per-step``): one ``sbatch --parsable`` per
step execution, released by Slurm as soon as the command ends. The batch script (handed to
``sbatch`` on its standard input, nothing to stage) enters the step's working directory,
rebuilds the step's environment, runs the command with its redirections and writes the
command's exit status to a file in the location's ``workdir`` (a directory the orchestrator
and the compute nodes share). The held/malleable/auto strategies live in slurm_allocation.py.

``submit: salloc`` avoids Slurm's scheduler tick: Slurm 22.05 starts a batch job only at its
next scheduling pass (0.4-0.95 s after ``sbatch`` on the test host, whatever slurm.conf says),
while ``salloc --no-shell`` is granted at once (~10 ms) and ``srun --jobid=ID`` starts a step
in ~30 ms. A step of one node and one task then gets an allocation of its own from ``salloc``
(the same resource options ``sbatch`` would get), its job id is reported at once, the same
batch script runs in it with ``srun ... bash -s`` and the allocation is ``scancel``led as soon
as the script ends; its times and node-seconds are Slurm's record of the allocation. MPI steps
and steps of several nodes or tasks still use ``sbatch``: their command runs ``srun`` itself,
and an ``srun`` inside an ``srun`` step sees that step's ``SLURM_*`` view, not the
allocation's ("More processors requested than permitted"). See slurm_salloc.py.

Environment: ``sbatch`` runs with a minimal environment of its own (PATH, HOME, USER, LOGNAME,
LANG, LC_ALL, TZ and ``SLURM_CONF``) and ``--export=ALL`` of that, so nothing else of the
orchestrator's environment reaches the job. (``--export=NONE``, or a list of variables,
makes slurmd load the user's login environment with ``su -`` first, which was measured to
delay the command's start by 0.1-1.1 s per job.) Inside the job the script unsets every
variable except Slurm's own ``SLURM_*``/``SLURMD_*`` ones (they describe the allocation;
``srun`` needs them), exports the step's environment exactly as cwltool built it (plus the
location's ``environment``, which wins on conflicts) and runs the command through
``env -u SHLVL -u _`` so not even bash's bookkeeping variables leak. ``SLURM_EXPORT_ENV=ALL``
is set so ``srun`` inside a step propagates that environment to its tasks.

Completion is event-like: one poller task per connector instance calls ``squeue`` once per
``poll_interval`` for *all* in-flight jobs of the location and wakes the waiting coroutines.
A finished job keeps its final state in ``squeue --states=all`` for ``MinJobAge`` seconds;
a job that already left it is looked up in ``sacct -c`` (jobcomp) and ``scontrol show job``.
Start, end and node count come from Slurm's records (whole seconds), so node-seconds are
what Slurm accounted, not qflow's view.

Exit codes (``JobOutcome.exit_code``):

* the job ran to its end (``COMPLETED``/``FAILED``): the command's exit status as the batch
  shell saw it (``$?``; a command killed by signal N gives 128+N, as in any shell script);
* Slurm ended the job: ``-15`` (SIGTERM, the signal Slurm terminates jobs with) for
  ``TIMEOUT``, ``CANCELLED``, ``PREEMPTED`` and ``DEADLINE``; ``-9`` for ``NODE_FAIL``,
  ``BOOT_FAIL`` and ``OUT_OF_MEMORY``. ``message`` then gives Slurm's state and reason.

With ``login: user@host`` the Slurm commands run on that login node over SSH: one OpenSSH
master connection (``ControlMaster``) and a few long-lived remote shells on it, so a command
costs about what it costs on the login node itself (no handshake, no start-up files per
command). The steps' paths (working directory, redirections, ``workdir``) must be the same on
the cluster (a shared filesystem); the default ``workdir`` is then ``~/.qflow/slurm/...`` on
the login node. ``submit: salloc`` and the held/malleable/auto strategies keep an ``srun``
running for each step's whole duration and are refused with ``login`` (config validation).

Retries are the engine's (``retries`` of the location); jobs are submitted with
``--no-requeue`` so Slurm never reruns a step behind qflow's back. Cancelling :meth:`run`
``scancel``s the job and waits (bounded) until Slurm reports it ended (a ``salloc`` request
still pending is withdrawn by its unique job name).

Crashes: a step's job is named after its journalled execution id (``qflow-<execution id>``,
:func:`job_name`), before it exists, so after a ``kill -9`` of qflow ``cancel_orphan`` finds
it by that name even if the crash came before its id was known (a job ``sbatch`` submitted,
a ``salloc`` request still pending), and by its id when it was. Allocations kept across
steps are journalled by slurm_allocation.py under their own names.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from qflow.connector import (
    Connector,
    EnvironmentVariables,
    JobOutcome,
    JobSpec,
    JobStartedCallback,
    LocationConfig,
)
from qflow.connectors.slurm_allocation import SlurmAllocations
from qflow.connectors.slurm_salloc import salloc, srun_script
from qflow.rundir.journal import Resource

_logger = logging.getLogger("qflow.connectors.slurm")
_T = TypeVar("_T")

CANCEL_WAIT_S = 30.0
"""Longest wait, after ``scancel``, for Slurm to report the job ended."""
RESCANCEL_S = 1.0
"""While a cancelled job is still alive, ``scancel`` is repeated this often (a request the
controller missed, a job a crashed run's ``sbatch`` submitted after the first ``scancel``)."""
SETTLE_S = 2.0
"""How long a step whose srun died waits for Slurm to show why (its allocation's state)."""
COMMAND_TIMEOUT_S = 60.0
"""Longest wait for one Slurm command (``sbatch``, ``squeue``, ...)."""
SUBMIT_CONCURRENCY = 8
"""``sbatch`` calls of one location in flight at the same time."""
VANISHED_POLLS = 2
"""Consecutive polls a job must be missing from ``squeue`` before it counts as gone."""
SSH_CONTROL_PERSIST_S = 120
"""An SSH master connection left behind by a crashed qflow exits after this many idle seconds."""
SSH_SESSIONS = 4
"""Remote shells (SSH channels) of one location running commands at the same time."""
EXIT_FILE_WAIT_S = 1.0
"""How long a missing exit-status file is waited for (shared filesystems lag)."""

SIGTERM_STATES = frozenset({"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE"})
"""Slurm ends these jobs with SIGTERM (then SIGKILL): reported as exit code -15."""
SIGKILL_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY"})
"""Jobs lost with their node or killed for memory: reported as exit code -9."""
RAN_STATES = frozenset({"COMPLETED", "FAILED"})
"""The batch script ran to its end: the exit-status file tells the command's status."""
TERMINAL_STATES = SIGTERM_STATES | SIGKILL_STATES | RAN_STATES | {"REVOKED"}
STARTED_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING"})

_SLURM_TIME = re.compile(
    r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}"
    r"|UNLIMITED|INFINITE|infinite|unlimited)$"
)
_SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQUEUE_FIELDS = ("JobID", "State", "Reason", "StartTime", "EndTime", "NumNodes", "exit_code")
_SQUEUE_FORMAT = ",".join(f"{f}:|" for f in _SQUEUE_FIELDS) + ",NodeList:"
_SACCT_FIELDS = "JobID,State,Start,End,NNodes,ExitCode,NodeList"
_COMMAND_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")
"""Variables of the orchestrator's environment the Slurm commands get (nothing else)."""


class SlurmError(RuntimeError):
    """A Slurm command failed (submission refused, controller unreachable, ...)."""


class SlurmConnector(Connector):
    """Runs each step execution as its own Slurm job (``sbatch``, or ``salloc`` + ``srun``)."""

    class Config(LocationConfig):
        """Keys of a ``connector: slurm`` location."""

        partition: str | None = Field(
            default=None,
            description="Slurm partition the steps' jobs are submitted to (`--partition`); "
            "unset: the cluster's default partition.",
        )
        nodes: int = Field(
            default=1,
            ge=1,
            description="Nodes each step's job asks for (`--nodes`). The node count in the run "
            "report is the one Slurm allocated. For MPI steps (`MPIRequirement`) with this key "
            "unset, Slurm chooses the node count for the requested tasks.",
        )
        tasks: int | None = Field(
            default=None,
            ge=1,
            description="Tasks per job (`--ntasks`) for steps without `MPIRequirement`; an MPI "
            "step asks for as many tasks as it has processes and runs its command under `srun`.",
        )
        cpus: int | None = Field(
            default=None,
            ge=1,
            description="CPUs per task (`--cpus-per-task`) for steps that do not say how many "
            "cores they need; a step's `ResourceRequirement` cores (rounded up) win.",
        )
        gres: str | None = Field(
            default=None,
            description="Generic resources per node (`--gres`), e.g. `qpu:1` for one virtual "
            "QPU of a quantum partition, or `gpu:a100:2`.",
        )
        account: str | None = Field(
            default=None, description="Account charged for the jobs (`--account`)."
        )
        qos: str | None = Field(default=None, description="Quality of service (`--qos`).")
        constraint: str | None = Field(
            default=None,
            description="Node features the jobs require (`--constraint`), e.g. `skylake&ib`.",
        )
        time: int | str | None = Field(
            default=None,
            description="Default time limit of a job (`--time`): minutes, or a Slurm time "
            "string such as `1:30:00` or `2-00:00:00`. A step's `ToolTimeLimit` wins (rounded up "
            "to whole minutes, Slurm's resolution). Unset: the partition's default.",
        )
        extra: list[str] = Field(
            default_factory=list,
            description="Further `sbatch` options added to every job, each one list item in "
            "`--option=value` form, e.g. `[--exclusive, --reservation=demo]`. With `submit: "
            "salloc` they go to `salloc` too (both know most options).",
        )
        environment: EnvironmentVariables = Field(
            default_factory=dict,
            description="Variables added to every step's environment on this location (e.g. a "
            "PATH or module path valid on the compute nodes); they override the step's own "
            "values of the same name.",
        )
        slurm_conf: str | None = Field(
            default=None,
            description="Path of the `slurm.conf` the Slurm commands read (sets `SLURM_CONF` for "
            "them and inside the jobs); unset: `SLURM_CONF` of qflow's environment, else "
            "Slurm's built-in default.",
        )
        workdir: str | None = Field(
            default=None,
            description="Directory for the jobs' exit-status files, Slurm logs and captured "
            "output. The orchestrator and the compute nodes must both see it (a shared "
            "filesystem). Unset: a fresh directory under this host's temporary directory, "
            "removed when the run ends (fine when Slurm runs on this host).",
        )
        login: str | None = Field(
            default=None,
            description="`user@host` (or a Host alias of `~/.ssh/config`) of a login node: the "
            "Slurm commands run there over SSH, through one multiplexed connection "
            "(`ControlMaster`) opened when the run starts. The steps' working directories and "
            "files must have the same paths on the cluster (a shared filesystem). Unset: the "
            "Slurm commands run on this host.",
        )
        ssh_key: str | None = Field(
            default=None,
            description="Private key for `login` (`ssh -i`); unset: ssh's usual keys and agent. "
            "Authentication must work without a prompt (`BatchMode=yes`).",
        )
        ssh_port: int | None = Field(
            default=None,
            ge=1,
            le=65535,
            description="SSH port of `login`; unset: 22 or what `~/.ssh/config` says.",
        )
        ssh_options: list[str] = Field(
            default_factory=list,
            description="Further ssh `-o` options for `login`, e.g. `[ProxyJump=bastion, "
            "UserKnownHostsFile=~/.qflow/known_hosts]`. Host keys are checked as ssh does "
            "(`StrictHostKeyChecking=accept-new` unless set here).",
        )
        allocation: Literal["per-step", "held", "malleable", "auto"] | None = Field(
            default=None,
            description="Allocation strategy of this location, overriding the deployment's "
            "`policy.allocation` (docs/strategies.md).",
        )
        submit: Literal["sbatch", "salloc"] = Field(
            default="sbatch",
            description="How a `per-step` location gets each step's allocation. `sbatch`: one "
            "batch job per step execution, started at Slurm's next scheduling pass (up to ~1 s "
            "later on Slurm 22.05). `salloc`: `salloc --no-shell` (granted at once when nodes "
            "are free), the step's script run in it with `srun`, the allocation cancelled when "
            "the step ends; only for steps of one node and one task (no `MPIRequirement`, "
            "`nodes: 1`, `tasks` unset or 1), the others still use `sbatch`. Not with `login` "
            "(docs/slurm.md).",
        )
        held_nodes: int | None = Field(
            default=None,
            ge=1,
            description="Nodes a held/malleable/auto location allocates in all (one step per "
            "node); unset: `slots` x `nodes`.",
        )
        auto_keep_factor: float = Field(
            default=2.0,
            gt=0,
            description="`auto` releases all its nodes at a quantum phase expected to last "
            "more than this many times the mean wait it measured for getting nodes granted, "
            "unless it met other jobs on the partition (then it shrinks to one node).",
        )
        poll_interval: float = Field(
            default=0.05,
            gt=0,
            le=60,
            description="Seconds between two `squeue` calls while jobs are in flight (one call "
            "covers all jobs of the location). A finished job is noticed within about this "
            "time plus Slurm's own delay (tens of milliseconds).",
        )

        @field_validator("time")
        @classmethod
        def _check_time(cls, value: int | str | None) -> int | str | None:
            if isinstance(value, int) and value < 1:
                raise ValueError("a time limit must be at least 1 minute")
            if isinstance(value, str) and not _SLURM_TIME.match(value.strip()):
                raise ValueError(
                    f"{value!r} is not a Slurm time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, "
                    "D-HH:MM:SS or UNLIMITED)"
                )
            return value.strip() if isinstance(value, str) else value

        @field_validator("extra")
        @classmethod
        def _check_extra(cls, value: list[str]) -> list[str]:
            for item in value:
                if not item.startswith("-"):
                    raise ValueError(
                        f"{item!r} is not an sbatch option; write each option as one item "
                        "starting with '-', e.g. --exclusive or --reservation=demo"
                    )
            return value

        @field_validator("login")
        @classmethod
        def _check_login(cls, value: str | None) -> str | None:
            if value is not None and (not value.strip() or value.startswith("-") or " " in value):
                raise ValueError(f"{value!r} is not a user@host or host name for ssh")
            return value

        def allocation_problem(self, strategy: str) -> tuple[str, str] | None:
            if self.login and strategy != "per-step":
                return (
                    f"allocation {strategy} runs steps with srun from qflow's host and is not "
                    "available with login (SSH) yet",
                    "use allocation: per-step for this location",
                )
            return None

        @model_validator(mode="after")
        def _strategies_need_local_commands(self) -> SlurmConnector.Config:
            problem = self.allocation_problem(self.allocation or "per-step")
            if problem is not None:
                raise ValueError(f"{problem[0]}. Fix: {problem[1]}")
            if self.login and self.submit == "salloc":
                raise ValueError(
                    "submit: salloc runs each step's srun from qflow's host for the step's whole "
                    "duration and is not available with login (SSH) yet. Fix: use submit: sbatch "
                    "(or leave submit out) here"
                )
            return self

        @model_validator(mode="after")
        def _ssh_keys_need_login(self) -> SlurmConnector.Config:
            if self.login is None and (self.ssh_key or self.ssh_port or self.ssh_options):
                raise ValueError(
                    "ssh_key, ssh_port and ssh_options only apply with login: user@host"
                )
            for option in self.ssh_options:
                if "=" not in option or option.startswith("-"):
                    raise ValueError(
                        f"{option!r} is not an ssh option; write Name=value, e.g. ProxyJump=bastion"
                    )
            return self

    def __init__(self, location: str, config: LocationConfig) -> None:
        super().__init__(location, config)
        self.cfg: SlurmConnector.Config = (
            config
            if isinstance(config, SlurmConnector.Config)
            else SlurmConnector.Config.model_validate(config.model_dump())
        )
        self._transport: _Transport = (
            _SshTransport(self.cfg, location) if self.cfg.login else _LocalTransport(self.cfg)
        )
        self._tracked: dict[str, _Tracked] = {}
        self._poller: asyncio.Task[None] | None = None
        self._submit_slots: asyncio.Semaphore | None = None
        self._prepare_lock: asyncio.Lock | None = None
        self._workdir: str | None = None
        self._own_workdir = False
        self._srun = "srun"
        self._poll_errors = 0
        self._allocations: dict[str, SlurmAllocations] = {}
        """Per strategy (held, malleable, auto) its allocations: a binding may override it."""
        self._salloc_names: set[str] = set()
        """Job names of the ``submit: salloc`` steps in flight (pending or running)."""

    @property
    def strategy(self) -> str:
        """per-step, held, malleable or auto: the location's own, else the deployment's."""
        return self.cfg.allocation or self.allocation_policy

    async def quantum_phase(self, started: bool) -> None:
        for allocations in list(self._allocations.values()):
            await allocations.quantum_phase(started)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the SSH session (if any), create the work directory, check the controller."""
        await self._prepare()
        rc, out, err = await self._transport.run(["scontrol", "ping"])
        if rc != 0 or "UP" not in out:
            raise SlurmError(
                f"location {self.location}: the Slurm controller does not answer "
                f"(scontrol ping: {(out + err).strip() or f'exit {rc}'})"
            )

    async def stop(self) -> None:
        """Cancel the jobs still in flight, stop the poller, remove the own work directory."""
        for allocations in self._allocations.values():
            await allocations.close()  # held/malleable/auto: release every allocation
        self._allocations.clear()
        for name in list(self._salloc_names):  # submit: salloc, by name: pending ones too
            await self._scancel([], name)
        ids = [jid for jid, t in self._tracked.items() if not t.done.is_set()]
        if ids:
            await self._scancel(ids)
            waits = [self._tracked[j].done.wait() for j in ids]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), CANCEL_WAIT_S)
        # let the woken run() calls collect their outcomes before the work directory goes
        deadline = time.monotonic() + 5
        while (self._tracked or self._salloc_names) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._own_workdir and self._workdir is not None:
            await self._transport.remove_tree(self._workdir)
        self._workdir = None
        self._own_workdir = False
        await self._transport.close()

    async def cancel_orphan(self, resource: Resource) -> None:
        """End a job a crashed run left behind (found by its name, and by its id if known) and
        wait (bounded) until Slurm reports it ended; a job already gone is fine.

        An ``execution`` is found by the job name derived from its id (:func:`job_name`), a
        step of a held allocation (``JOBID@NODE``) by its allocation, a ``slurm-allocation``
        by the name it was journalled with. Raises :class:`SlurmError` if a job outlives
        ``CANCEL_WAIT_S``.
        """
        name, ids = _orphan_handles(resource)
        await self._prepare()
        await self._end_jobs(ids, name)

    async def _end_jobs(self, ids: list[str], name: str | None = None) -> dict[str, _JobInfo]:
        """``scancel`` the jobs ``ids`` and every job named ``name``, then wait until Slurm shows
        none of them alive: their last records (a job that already left squeue has none).

        Raises :class:`SlurmError` if one is still alive after ``CANCEL_WAIT_S``.
        """
        await self._scancel(ids, name)
        deadline = time.monotonic() + CANCEL_WAIT_S
        rescancel_at = time.monotonic() + RESCANCEL_S
        seen: dict[str, _JobInfo] = {}
        alive = list(ids)
        while True:
            with contextlib.suppress(SlurmError):  # a failed squeue: ask again
                infos = await self._squeue(ids) if ids else {}
                if name:
                    infos.update(await self._squeue(name=name))
                seen.update(infos)
                alive = [
                    jobid for jobid, info in infos.items() if info.state not in TERMINAL_STATES
                ]
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
                await self._scancel(alive)
                rescancel_at = now + RESCANCEL_S
            await asyncio.sleep(max(self.cfg.poll_interval, 0.05))

    async def _end_job(
        self, jobid: str | None, resource: Resource | None = None
    ) -> _JobInfo | None:
        """``scancel`` a job (and every job of the journalled ``resource``'s name) and wait
        (bounded) until Slurm reports it ended, then mark ``resource`` ended in the journal.

        Returns the job's final record (Slurm's start and end times, nodes); None if Slurm has
        none or it did not end in time (logged; the journal then keeps the resource alive).
        """
        name = resource.handle.get("name") if resource is not None else None
        try:
            seen = await self._end_jobs([jobid] if jobid else [], name)
        except SlurmError as exc:
            _logger.warning("%s", exc)
            return None
        if resource is not None:
            self.journal.ended(resource)
        if jobid is None:
            return None
        return seen.get(jobid) or await self._lookup_finished(jobid)

    async def _prepare(self) -> None:
        """Once: the SSH session, the work directory and the path of ``srun``."""
        if self._prepare_lock is None:
            self._prepare_lock = asyncio.Lock()
        async with self._prepare_lock:
            if self._workdir is not None:
                return
            await self._transport.open()
            self._workdir, self._own_workdir = await self._transport.make_workdir(
                self.cfg.workdir, self.location
            )
            self._srun = await self._transport.which("srun") or "srun"

    # -- one step execution ---------------------------------------------------------------
    async def run(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        await self._prepare()
        strategy = job.allocation or self.strategy  # the step's binding, else the location's
        if strategy != "per-step":
            if strategy not in self._allocations:
                self._allocations[strategy] = SlurmAllocations(
                    self, strategy, self.report_allocation
                )
            return await self._allocations[strategy].run(job, on_started)
        if self.cfg.submit == "salloc" and _one_task(self.cfg, job):
            return await self._run_in_salloc(job, on_started)
        plan = self._plan(job)
        tracked = await self._submit(plan, on_started)
        try:
            await tracked.done.wait()
        except asyncio.CancelledError:
            await _shielded(self._cancel(tracked, plan))
            raise
        try:
            return await self._outcome(tracked, plan)
        finally:
            await _shielded(self._forget(tracked, plan))

    def _plan(self, job: JobSpec) -> _Plan:
        if self._workdir is None:
            raise RuntimeError("SlurmConnector._plan before _prepare")
        workdir = PurePosixPath(self._workdir)
        tag = f"{_safe_name(job.name)}-{uuid.uuid4().hex[:8]}"
        capture = workdir / f"{tag}.out" if not (job.stdout_path and job.stderr_path) else None
        options, time_limit = self._resource_options(job)
        plan = _Plan(
            job=job,
            name=job_name(job.execution_id) if job.execution_id else f"qflow-{tag}",
            rc_file=str(workdir / f"{tag}.rc"),
            log_file=str(workdir / f"{tag}.log"),
            capture_file=str(capture) if capture else None,
            options=options,
            args=[],
            script="",
            time_limit=time_limit,
        )
        plan.args = [
            "sbatch",
            "--parsable",
            "--export=ALL",  # of the minimal environment sbatch runs with; see the module doc
            "--no-requeue",
            f"--job-name={plan.name}",
            f"--chdir={workdir}",
            f"--output={plan.log_file}",
            f"--error={plan.log_file}",
            *options,
        ]
        plan.script = self._script(job, plan)
        return plan

    def _resource_options(self, job: JobSpec) -> tuple[list[str], str | None]:
        """What the step's allocation asks Slurm for (``sbatch`` and ``salloc`` alike), and
        its time limit."""
        cfg, res = self.cfg, job.resources
        args: list[str] = []
        if cfg.partition:
            args.append(f"--partition={cfg.partition}")
        if res.mpi_procs:
            args.append(f"--ntasks={res.mpi_procs}")
            if "nodes" in cfg.model_fields_set:
                args.append(f"--nodes={cfg.nodes}")
        else:
            args.append(f"--nodes={cfg.nodes}")
            if cfg.tasks:
                args.append(f"--ntasks={cfg.tasks}")
        cpus = _cpus(res.cores, cfg.cpus)
        if cpus:
            args.append(f"--cpus-per-task={cpus}")
        if res.ram_mib:
            args.append(f"--mem={math.ceil(res.ram_mib)}M")
        time_limit: str | None = None
        if res.time_limit_s:
            time_limit = str(max(1, math.ceil(res.time_limit_s / 60)))
        elif cfg.time is not None:
            time_limit = str(cfg.time)
        if time_limit:
            args.append(f"--time={time_limit}")
        for flag, value in (
            ("--gres", cfg.gres),
            ("--account", cfg.account),
            ("--qos", cfg.qos),
            ("--constraint", cfg.constraint),
        ):
            if value:
                args.append(f"{flag}={value}")
        args.extend(cfg.extra)
        return args, time_limit

    def _script(self, job: JobSpec, plan: _Plan) -> str:
        q = shlex.quote
        env = {**job.env, **self.cfg.environment}
        exports = [
            f"export {name}={q(value)}" for name, value in env.items() if _SHELL_NAME.match(name)
        ]
        odd = [f"{name}={value}" for name, value in env.items() if not _SHELL_NAME.match(name)]
        unset = [f"-u {name}" for name in ("SHLVL", "_") if name not in env]
        runner = ["/usr/bin/env", *" ".join(unset).split(), *odd]
        prefix = ""
        if job.resources.mpi_procs:
            srun = [self._srun, "--export=ALL", f"--ntasks={job.resources.mpi_procs}"]
            cpus = _cpus(job.resources.cores, self.cfg.cpus)
            if cpus:
                srun.append(f"--cpus-per-task={cpus}")
            prefix = " ".join(q(a) for a in srun) + " "
        stdin = q(job.stdin_path) if job.stdin_path else "/dev/null"
        cap = q(plan.capture_file) if plan.capture_file else None
        if job.stdout_path and job.stderr_path:
            redirect = f"> {q(job.stdout_path)} 2> {q(job.stderr_path)}"
        elif job.stdout_path:
            redirect = f"> {q(job.stdout_path)} 2> {cap}"
        elif job.stderr_path:
            redirect = f"> {cap} 2> {q(job.stderr_path)}"
        else:
            redirect = f"> {cap} 2>&1"
        command = " ".join(q(a) for a in runner) + " " + shlex.join(job.command)
        lines = [
            "#!/bin/bash",
            f"# qflow step {job.step} ({job.name}), written by qflow's slurm connector",
            f"__qflow_rc={q(plan.rc_file)}",
            f"cd -- {q(job.cwd)} || {{ echo {q('qflow: cannot enter ' + job.cwd)} >&2;"
            ' printf "1\\n" > "$__qflow_rc"; exit 1; }',
            "# the step's environment: exactly job.env (+ the location's environment),",
            "# keeping only Slurm's own SLURM_*/SLURMD_* variables of the job",
            "for __qflow_v in $(compgen -e); do",
            '  case $__qflow_v in SLURM_*|SLURMD_*) ;; *) unset "$__qflow_v" 2>/dev/null ;; esac',
            "done",
            "unset __qflow_v",
            "export SLURM_EXPORT_ENV=ALL",
            *exports,
            f"{prefix}{command} < {stdin} {redirect}",
            "__qflow_s=$?",
            'printf "%d\\n" "$__qflow_s" > "$__qflow_rc"',
            'exit "$__qflow_s"',
            "",
        ]
        return "\n".join(lines)

    async def _submit(self, plan: _Plan, on_started: JobStartedCallback) -> _Tracked:
        """``sbatch`` the job and register it with the poller; a cancel never orphans a job."""
        task = asyncio.ensure_future(self._sbatch(plan))
        try:
            jobid = await asyncio.shield(task)
        except asyncio.CancelledError:
            # the job may be submitted already: learn its id, then cancel it
            async def cleanup() -> None:
                with contextlib.suppress(Exception):
                    jobid = await task
                    tracked = self._track(jobid, None)
                    await self._cancel(tracked, plan)

            await _shielded(cleanup())
            raise
        return self._track(jobid, on_started)

    async def _sbatch(self, plan: _Plan) -> str:
        if self._submit_slots is None:
            self._submit_slots = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        delays = (0.2, 1.0, 3.0)
        async with self._submit_slots:
            for attempt in range(len(delays) + 1):
                rc, out, err = await self._transport.run(plan.args, stdin=plan.script.encode())
                if rc == 0 and out.strip():
                    return out.strip().splitlines()[-1].split(";")[0].strip()
                transient = any(
                    s in err
                    for s in (
                        "Unable to contact slurm controller",
                        "Socket timed out",
                        "Resource temporarily unavailable",
                        "Slurm temporarily unable",
                    )
                )
                if not transient or attempt == len(delays):
                    break
                await asyncio.sleep(delays[attempt])
        raise SlurmError(
            f"sbatch refused step {plan.job.name} on location {self.location}: "
            f"{err.strip() or f'exit {rc}'} (options: {shlex.join(plan.args[1:])})"
        )

    def _track(self, jobid: str, on_started: JobStartedCallback | None) -> _Tracked:
        tracked = _Tracked(jobid=jobid, on_started=on_started)
        self._tracked[jobid] = tracked
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_loop(), name=f"qflow-slurm-poller-{self.location}"
            )
        return tracked

    async def _forget(self, tracked: _Tracked, plan: _Plan) -> None:
        self._tracked.pop(tracked.jobid, None)
        files = [p for p in (plan.rc_file, plan.log_file, plan.capture_file) if p]
        await self._transport.remove(files)

    async def _cancel(self, tracked: _Tracked, plan: _Plan) -> None:
        """``scancel`` the job and wait (bounded) until Slurm reports it ended."""
        if not tracked.done.is_set():
            await self._scancel([tracked.jobid])
            try:
                await asyncio.wait_for(tracked.done.wait(), CANCEL_WAIT_S)
            except TimeoutError:
                _logger.warning(
                    "Slurm job %s (location %s) still not ended %.0f s after scancel",
                    tracked.jobid,
                    self.location,
                    CANCEL_WAIT_S,
                )
        await self._forget(tracked, plan)

    async def _scancel(self, ids: list[str], name: str | None = None) -> None:
        """``scancel`` jobs by id, and every job named ``name`` (one call each: given both,
        scancel would only cancel the ids that also have that name)."""
        for argv in ([*ids] if ids else None, [f"--name={name}"] if name else None):
            if argv is None:
                continue
            rc, _, err = await self._transport.run(["scancel", *argv])
            quiet = ("already completing or completed", "Invalid job id")
            if rc != 0 and not any(q in err for q in quiet):
                _logger.warning("scancel %s: %s", " ".join(argv), err.strip())

    # -- submit: salloc -------------------------------------------------------------------
    async def _run_in_salloc(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        """The step in an allocation of its own (``salloc``), run with ``srun`` and cancelled
        as soon as it ends: no scheduler tick to wait for, unlike ``sbatch``.

        The job id is reported as soon as it is granted; a crashed run's resume finds the
        allocation by it, or by its name (``cancel_orphan``) if the crash came first.
        """
        plan = self._plan(job)
        name = plan.name  # unique: a pending request is withdrawn by its name
        self._salloc_names.add(name)
        try:
            jobid, err = await salloc(self, name, plan.options)
            if jobid is None:
                raise SlurmError(
                    f"salloc refused step {job.name} on location {self.location}: "
                    f"{err[-500:]} (options: {shlex.join(plan.options)})"
                )
            granted = time.time()
            try:
                on_started(jobid)
                cpus = [o for o in plan.options if o.startswith("--cpus-per-task=")]
                rc, err = await srun_script(self, jobid, plan.script, cpus)  # as sbatch's env
                code = await self._read_exit_file(plan.rc_file, wait=False)
                ended_by_slurm = None
                if code is None:  # the script did not finish: did Slurm end the allocation?
                    ended_by_slurm = await self._ended_by_slurm(jobid)
                    code = await self._read_exit_file(plan.rc_file, wait=True)
            finally:
                final = await _shielded(self._end_job(jobid))
            return await self._salloc_outcome(
                jobid, plan, granted, (code, rc, err), ended_by_slurm, final
            )
        finally:
            self._salloc_names.discard(name)
            await _shielded(self._collect(plan))

    async def _ended_by_slurm(self, jobid: str) -> _JobInfo | None:
        """The allocation's final record if Slurm ends it within ``SETTLE_S`` (a cancel, a
        time limit: srun learns of it a little before squeue shows the final state)."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(SlurmError):
                info = (await self._squeue([jobid])).get(jobid)
                if info is None or info.state in TERMINAL_STATES:
                    return info
            await asyncio.sleep(0.05)
        return None

    async def _salloc_outcome(
        self,
        jobid: str,
        plan: _Plan,
        granted: float,
        ran: tuple[int | None, int, str],
        ended_by_slurm: _JobInfo | None,
        final: _JobInfo | None,
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
            code, message = await self._exit_and_message(jobid, ended_by_slurm, None, plan)
        elif code is None:
            code = srun_rc or 1
            message = (
                f"srun in Slurm job {jobid}{where} ended with status {srun_rc} before the step "
                f"wrote its exit status{detail}"
            )
        elif code != 0:
            message = f"exited with status {code} (Slurm job {jobid}{where}, salloc){detail}"
        return JobOutcome(
            exit_code=code,
            message=message,
            started=started,
            ended=ended,
            nodes=nodes,
            node_seconds=float(nodes * (ended - started)),
            external_id=jobid,
        )

    # -- the poller ----------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        """One ``squeue`` per interval for all in-flight jobs; wakes their coroutines."""
        while True:
            if not any(not t.done.is_set() for t in self._tracked.values()):
                return
            await asyncio.sleep(self.cfg.poll_interval)
            waiting = [t for t in self._tracked.values() if not t.done.is_set()]
            if not waiting:
                return
            try:
                infos = await self._squeue([t.jobid for t in waiting])
            except Exception as exc:  # noqa: BLE001 - the poller must outlive a bad poll
                self._poll_errors += 1
                if self._poll_errors in (1, 10) or self._poll_errors % 100 == 0:
                    _logger.warning("location %s: %s (will retry)", self.location, exc)
                continue
            self._poll_errors = 0
            for tracked in waiting:
                info = infos.get(tracked.jobid)
                if info is None:
                    tracked.missing += 1
                    if tracked.missing >= VANISHED_POLLS:
                        tracked.done.set()
                    continue
                tracked.missing = 0
                if info.state in STARTED_STATES or (info.state in TERMINAL_STATES and info.ran):
                    self._report_started(tracked)
                if info.state in TERMINAL_STATES:
                    tracked.final = info
                    tracked.done.set()

    def _report_started(self, tracked: _Tracked) -> None:
        if tracked.started_reported:
            return
        tracked.started_reported = True
        if tracked.on_started is not None:
            try:
                tracked.on_started(tracked.jobid)
            except Exception:  # noqa: BLE001 - a callback bug must not stop the poller
                _logger.exception("on_started callback of Slurm job %s failed", tracked.jobid)

    async def _squeue(
        self, ids: list[str] | None = None, *, name: str | None = None
    ) -> dict[str, _JobInfo]:
        """Slurm's records of the jobs ``ids`` (or of the jobs named ``name``), finished ones
        too while the controller keeps them (``MinJobAge``)."""
        which = f"--jobs={','.join(ids)}" if ids else f"--name={name}"
        rc, out, err = await self._transport.run(
            ["squeue", "--noheader", "--states=all", which, f"--Format={_SQUEUE_FORMAT}"],
            query=True,
        )
        if rc != 0:
            if "Invalid job id" in err:  # a single id squeue no longer knows
                return {}
            raise SlurmError(f"squeue failed: {err.strip() or f'exit {rc}'}")
        infos: dict[str, _JobInfo] = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) < len(_SQUEUE_FIELDS) + 1:
                continue
            jobid, state, reason, start, end, nodes, raw = (p.strip() for p in parts[:7])
            infos[jobid] = _JobInfo(
                state=state.split()[0] if state else "UNKNOWN",
                reason=reason,
                start=_epoch(start),
                end=_epoch(end),
                nodes=_int(nodes),
                exit_code=_decode_wait_status(raw),
                nodelist="|".join(parts[7:]).strip(),
            )
        return infos

    async def _lookup_finished(self, jobid: str) -> _JobInfo | None:
        """The final record of a job that left ``squeue``: ``sacct -c``, then ``scontrol``."""
        rc, out, _ = await self._transport.run(
            ["sacct", "-c", "-n", "-P", "-j", jobid, "-o", _SACCT_FIELDS], query=True
        )
        if rc == 0:
            for line in reversed(out.splitlines()):
                parts = line.split("|")
                if len(parts) >= 7 and parts[0].strip() == jobid:
                    return _JobInfo(
                        state=parts[1].split()[0] if parts[1].strip() else "UNKNOWN",
                        reason="",
                        start=_epoch(parts[2]),
                        end=_epoch(parts[3]),
                        nodes=_int(parts[4]),
                        exit_code=_decode_exit_pair(parts[5]),
                        nodelist=parts[6].strip(),
                    )
        rc, out, _ = await self._transport.run(
            ["scontrol", "show", "job", "--oneliner", jobid], query=True
        )
        if rc == 0 and out.strip():
            fields = dict(tok.split("=", 1) for tok in out.split() if "=" in tok[1:])
            state = fields.get("JobState", "UNKNOWN")
            if state in TERMINAL_STATES:
                return _JobInfo(
                    state=state,
                    reason=fields.get("Reason", ""),
                    start=_epoch(fields.get("StartTime", "")),
                    end=_epoch(fields.get("EndTime", "")),
                    nodes=_int(fields.get("NumNodes", "").split("-")[0]),
                    exit_code=_decode_exit_pair(fields.get("ExitCode", "")),
                    nodelist=fields.get("NodeList", ""),
                )
        return None

    # -- the outcome ---------------------------------------------------------------------
    async def _outcome(self, tracked: _Tracked, plan: _Plan) -> JobOutcome:
        info = tracked.final
        if info is None:  # left squeue between two polls
            info = await self._lookup_finished(tracked.jobid)
        jobid = tracked.jobid
        if info is not None and info.ran:
            self._report_started(tracked)
        rc = await self._read_exit_file(plan.rc_file, wait=info is None or info.state in RAN_STATES)
        await self._copy_capture(plan)
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
        node_seconds = (
            nodes * (ended - started) if started is not None and ended is not None else 0.0
        )
        exit_code, message = await self._exit_and_message(jobid, info, rc, plan)
        return JobOutcome(
            exit_code=exit_code,
            message=message,
            started=started,
            ended=ended,
            nodes=nodes,
            node_seconds=float(node_seconds),
            external_id=jobid,
        )

    async def _exit_and_message(
        self, jobid: str, info: _JobInfo, rc: int | None, plan: _Plan
    ) -> tuple[int, str | None]:
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
        log = await self._log_tail(plan)
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

    async def _log_tail(self, plan: _Plan, limit: int = 600) -> str:
        data = await self._transport.read(plan.log_file)
        text = (data or b"").decode(errors="replace").strip()
        return " | ".join(text[-limit:].splitlines())

    async def _read_exit_file(self, path: str, *, wait: bool) -> int | None:
        deadline = time.monotonic() + (EXIT_FILE_WAIT_S if wait else 0)
        while True:
            data = await self._transport.read(path)
            with contextlib.suppress(ValueError):
                if data and data.strip():
                    return int(data.strip())
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)

    async def _collect(self, plan: _Plan) -> None:
        """After a step ran in an allocation: its captured output, then its files go."""
        await self._copy_capture(plan)
        await self._transport.remove([p for p in (plan.rc_file, plan.capture_file) if p])

    async def _copy_capture(self, plan: _Plan) -> None:
        """Output with no file of its own goes to qflow's stderr, as with the local connector."""
        if plan.capture_file is None:
            return
        data = await self._transport.read(plan.capture_file)
        if data:
            sys.stderr.write(data.decode(errors="replace"))
            sys.stderr.flush()


# -- helpers --------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """Everything prepared for one submission."""

    job: JobSpec
    name: str
    """The Slurm job name (``sbatch`` or ``salloc``): :func:`job_name` of the execution id, so
    a crashed run's clean-up finds the job by it; unique either way."""
    rc_file: str
    log_file: str
    capture_file: str | None
    options: list[str]
    """What the allocation asks for (``--partition``, ``--nodes``, ...): sbatch's or salloc's."""
    args: list[str]
    """The whole ``sbatch`` command line."""
    script: str
    time_limit: str | None


@dataclasses.dataclass
class _JobInfo:
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


@dataclasses.dataclass
class _Tracked:
    """An in-flight job, as the poller sees it."""

    jobid: str
    on_started: JobStartedCallback | None
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    final: _JobInfo | None = None
    started_reported: bool = False
    missing: int = 0


async def _shielded(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run cleanup to its end even if the caller is cancelled again meanwhile; its result."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
        raise


def _one_task(cfg: SlurmConnector.Config, job: JobSpec) -> bool:
    """Whether a step fits ``submit: salloc``: one node, one task, no MPI.

    A step that needs more runs ``srun`` itself (MPI, several tasks or nodes). Under
    ``submit: salloc`` the step's script is already an ``srun`` step, and an ``srun`` inside it
    sees that step's ``SLURM_*`` view (one task), not the allocation's: Slurm refuses ("More
    processors requested than permitted"). Such steps go through ``sbatch``.
    """
    return not job.resources.mpi_procs and cfg.nodes == 1 and cfg.tasks in (None, 1)


def _cpus(cores: float | None, default: int | None) -> int | None:
    if cores:
        return max(1, math.ceil(cores))
    return default


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60] or "step"


def job_name(execution_id: str) -> str:
    """The Slurm job name of a step execution, derived from its journalled id alone."""
    return f"qflow-{_safe_name(execution_id)}"


_ORPHAN_ID = re.compile(r"(\d+(?:[_+]\d+)?)(?:@[\w.\-\[\],]+)?")
_ORPHAN_NAME = re.compile(r"qflow-[A-Za-z0-9_.-]+")


def _orphan_handles(resource: Resource) -> tuple[str, list[str]]:
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


# -- where the Slurm commands run ---------------------------------------------------------


class _Transport(abc.ABC):
    """Runs Slurm commands and touches the work directory: on this host or over SSH."""

    def __init__(self, cfg: SlurmConnector.Config) -> None:
        self.cfg = cfg
        self.slurm_env: dict[str, str] = {}
        """Variables set for every Slurm command (``SLURM_CONF``)."""
        conf = cfg.slurm_conf or (None if cfg.login else os.environ.get("SLURM_CONF"))
        if conf:
            self.slurm_env["SLURM_CONF"] = conf

    async def open(self) -> None:  # noqa: B027 - optional
        """Set up the channel (the SSH master connection)."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Tear the channel down."""

    @abc.abstractmethod
    async def run(
        self,
        argv: list[str],
        *,
        query: bool = False,
        stdin: bytes | None = None,
        timeout: float | None = COMMAND_TIMEOUT_S,
    ) -> tuple[int, str, str]:
        """Run a Slurm command; ``query`` adds ``SLURM_TIME_FORMAT=%s`` (epoch seconds).

        ``timeout=None`` is for commands that legitimately wait (a pending ``salloc``, a step's
        ``srun``); login mode ignores it (its remote shells have their own limit)."""

    @abc.abstractmethod
    async def read(self, path: str) -> bytes | None:
        """A file's content, None if it cannot be read."""

    @abc.abstractmethod
    async def remove(self, paths: list[str]) -> None:
        """Remove files (missing ones are fine)."""

    @abc.abstractmethod
    async def make_workdir(self, configured: str | None, location: str) -> tuple[str, bool]:
        """Create the work directory; returns its absolute path and whether it is our own."""

    @abc.abstractmethod
    async def remove_tree(self, path: str) -> None:
        """Remove our own work directory."""

    @abc.abstractmethod
    async def which(self, name: str) -> str | None:
        """Absolute path of a command where the Slurm commands run."""


class _LocalTransport(_Transport):
    """Slurm's commands on this host, with a minimal environment (see the module doc)."""

    def __init__(self, cfg: SlurmConnector.Config) -> None:
        super().__init__(cfg)
        env = {k: os.environ[k] for k in _COMMAND_ENV if k in os.environ}
        path = env.get("PATH", "")
        extra = [p for p in ("/usr/local/bin", "/usr/bin", "/bin") if p not in path.split(":")]
        env["PATH"] = ":".join([p for p in [path, *extra] if p])
        if "SLURM_CONF" in self.slurm_env:
            self.slurm_env["SLURM_CONF"] = str(Path(self.slurm_env["SLURM_CONF"]).expanduser())
        self.env = {**env, **self.slurm_env}
        self.query_env = {**self.env, "SLURM_TIME_FORMAT": "%s"}

    async def run(
        self,
        argv: list[str],
        *,
        query: bool = False,
        stdin: bytes | None = None,
        timeout: float | None = COMMAND_TIMEOUT_S,
    ) -> tuple[int, str, str]:
        env = self.query_env if query else self.env
        return await _exec(argv, env=env, stdin=stdin, timeout=timeout)

    async def read(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except OSError:
            return None

    async def remove(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                Path(path).unlink()

    async def make_workdir(self, configured: str | None, location: str) -> tuple[str, bool]:
        if configured:
            path = Path(configured).expanduser().absolute()
            path.mkdir(parents=True, exist_ok=True)
            return str(path), False
        return tempfile.mkdtemp(prefix=f"qflow-jobs-{_safe_name(location)}-"), True

    async def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    async def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.env.get("PATH"))


class _SshTransport(_Transport):
    """Slurm's commands on a login node over SSH, without a handshake or shell start per call.

    ``open`` starts an OpenSSH master connection (``ControlMaster``) in the background. The
    commands then go through a small pool of long-lived remote shells (``/bin/sh`` reading
    its standard input, each an SSH channel of the master connection): a command costs what
    the Slurm command itself costs, not an ``ssh`` process plus the login shell's start-up
    files (``~/.bashrc`` is read once per shell; it was measured at 130 ms per command here).
    Each command runs as ``env -i PATH=... HOME=... USER=... LOGNAME=... [SLURM_CONF=...]
    COMMAND``, so the login node's environment does not reach the jobs either. ``close``
    ends the shells and the master (``ssh -O exit``); if qflow dies, the master exits by
    itself after ``ControlPersist`` idle seconds and the shells with their connection.
    """

    def __init__(self, cfg: SlurmConnector.Config, location: str) -> None:
        super().__init__(cfg)
        self.login = cfg.login or ""
        self.location = location
        self._control_dir: str | None = None
        self._slots = asyncio.Semaphore(SSH_SESSIONS)
        self._idle: list[_RemoteShell] = []
        self._all: set[_RemoteShell] = set()

    def _options(self) -> list[str]:
        if self._control_dir is None:
            # short and private: the control socket path must stay under ~100 characters
            self._control_dir = tempfile.mkdtemp(prefix="qfssh-", dir="/tmp")
        # ssh takes the first value given for an option: the user's options come first
        opts = [arg for option in self.cfg.ssh_options for arg in ("-o", option)]
        opts += [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ControlPath={self._control_dir}/%C",
            "-o",
            f"ControlPersist={SSH_CONTROL_PERSIST_S}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-o",
            "ConnectTimeout=20",
        ]
        if self.cfg.ssh_port:
            opts += ["-p", str(self.cfg.ssh_port)]
        if self.cfg.ssh_key:
            opts += ["-i", str(Path(self.cfg.ssh_key).expanduser()), "-o", "IdentitiesOnly=yes"]
        return opts

    async def open(self) -> None:
        """Start the master connection (authenticates once; fails with ssh's message)."""
        opts = self._options()
        with tempfile.TemporaryFile() as errfile:
            # -f: ssh backgrounds itself after authentication; its stderr goes to a file,
            # not a pipe, because the master keeps it open for its whole life
            proc = await asyncio.create_subprocess_exec(
                "ssh",
                *opts,
                "-o",
                "ControlMaster=yes",
                "-f",
                "-N",
                self.login,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=errfile,
            )
            try:
                rc = await asyncio.wait_for(proc.wait(), COMMAND_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                rc = 255
            errfile.seek(0)
            err = errfile.read().decode(errors="replace").strip()
        if rc != 0:
            await self.close()
            raise SlurmError(
                f"location {self.location}: cannot open SSH to {self.login}: {err or f'exit {rc}'}"
            )

    async def close(self) -> None:
        for shell in list(self._all):
            await shell.close()
        self._all.clear()
        self._idle.clear()
        if self._control_dir is None:
            return
        await _exec(["ssh", *self._options(), "-O", "exit", self.login], env=dict(os.environ))
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

    async def _remote(self, command: str, stdin: bytes | None = None) -> tuple[int, bytes, str]:
        """Run a shell command line on the login node in one of the pooled shells."""
        async with self._slots:
            for attempt in range(2):
                shell = self._idle.pop() if self._idle else None
                try:
                    if shell is None:
                        shell = _RemoteShell(
                            ["ssh", *self._options(), "-o", "ControlMaster=no", "-T", self.login]
                        )
                        self._all.add(shell)
                        await shell.start()
                    result = await shell.request(command, stdin)
                except _ShellLost as exc:
                    if shell is not None:
                        self._all.discard(shell)
                        await shell.close()
                    if exc.sent or attempt == 1:  # a command may have run: never repeat it
                        return 255, b"", f"ssh to {self.login}: {exc}"
                    continue
                except BaseException:  # cancelled mid-command: the shell's output is unknown
                    if shell is not None:
                        self._all.discard(shell)
                        await _shielded(shell.close())
                    raise
                self._idle.append(shell)
                return result
        raise AssertionError("unreachable")

    async def run(
        self,
        argv: list[str],
        *,
        query: bool = False,
        stdin: bytes | None = None,
        timeout: float | None = COMMAND_TIMEOUT_S,
    ) -> tuple[int, str, str]:
        assigns = [f"{k}={v}" for k, v in self.slurm_env.items()]
        if query:
            assigns.append("SLURM_TIME_FORMAT=%s")
        command = 'env -i PATH="$PATH" HOME="$HOME" USER="$USER" LOGNAME="$LOGNAME" ' + shlex.join(
            [*assigns, *argv]
        )
        rc, out, err = await self._remote(command, stdin)
        return rc, out.decode(errors="replace"), err

    async def read(self, path: str) -> bytes | None:
        rc, out, _ = await self._remote(shlex.join(["cat", "--", path]))
        return out if rc == 0 else None

    async def remove(self, paths: list[str]) -> None:
        if paths:
            await self._remote(shlex.join(["rm", "-f", "--", *paths]))

    async def make_workdir(self, configured: str | None, location: str) -> tuple[str, bool]:
        if configured:
            rel = configured[2:] if configured.startswith("~/") else None
            target = f'"$HOME"/{shlex.quote(rel)}' if rel else shlex.quote(configured)
            command = f"mkdir -p -- {target} && cd -- {target} && pwd -P"
            own = False
        else:
            base = '"$HOME"/.qflow/slurm'
            pattern = f"{base}/{_safe_name(location)}-XXXXXX"
            command = f"mkdir -p -- {base} && mktemp -d {pattern}"
            own = True
        rc, out, err = await self._remote(command)
        lines = out.decode(errors="replace").strip().splitlines()
        path = lines[-1] if lines else ""
        if rc != 0 or not path.startswith("/"):
            raise SlurmError(
                f"location {self.location}: cannot create the work directory on {self.login}: "
                f"{err.strip() or f'exit {rc}'}"
            )
        return path, own

    async def remove_tree(self, path: str) -> None:
        await self._remote(shlex.join(["rm", "-rf", "--", path]))

    async def which(self, name: str) -> str | None:
        rc, out, _ = await self._remote(f"command -v {shlex.quote(name)}")
        path = out.decode(errors="replace").strip()
        return path if rc == 0 and path.startswith("/") else None


class _ShellLost(Exception):
    """The remote shell went away; ``sent`` tells whether the command may have run."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _RemoteShell:
    """One long-lived ``/bin/sh`` on the login node, fed commands on its standard input.

    Each command's output is framed: the shell runs it with stdout/stderr to files in a
    private temporary directory, then prints ``<marker> <status> <out bytes> <err bytes>``
    followed by both files, so any output (binary or not) comes back intact and lines that
    start-up files print are skipped.
    """

    _PRELUDE = (
        'T=$(mktemp -d "${TMPDIR:-/tmp}/qflow-sh-XXXXXX") || exit 1\n'
        "trap 'rm -rf \"$T\"' EXIT\n"
        "trap 'exit 1' HUP INT TERM PIPE\n"
    )

    def __init__(self, ssh_argv: list[str]) -> None:
        self.ssh_argv = ssh_argv
        self.proc: asyncio.subprocess.Process | None = None
        self.token = uuid.uuid4().hex[:12]
        self.count = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.ssh_argv,
            "exec /bin/sh 2>/dev/null",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=1 << 20,
        )
        await self._write(self._PRELUDE.encode())
        rc, _, _ = await self.request(":")
        if rc != 0:
            raise _ShellLost("the remote shell did not start", sent=False)

    async def _write(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ShellLost(f"connection lost ({exc})", sent=False) from None

    async def request(self, command: str, stdin: bytes | None = None) -> tuple[int, bytes, str]:
        assert self.proc is not None and self.proc.stdout is not None
        self.count += 1
        marker = f"@@qflow-{self.token}-{self.count}"
        text = ""
        source = "/dev/null"
        if stdin is not None:
            body = stdin.decode()
            delimiter = f"QFLOW_EOF_{uuid.uuid4().hex}"
            text += f"cat > \"$T/in\" <<'{delimiter}'\n{body}"
            text += ("" if body.endswith("\n") else "\n") + f"{delimiter}\n"
            source = '"$T/in"'
        text += (
            f'{{ {command}\n}} < {source} > "$T/o" 2> "$T/e"; __qflow_s=$?; '
            f"printf '%s %d %d %d\\n' {marker} \"$__qflow_s\" "
            '$(($(wc -c < "$T/o"))) $(($(wc -c < "$T/e"))); cat "$T/o" "$T/e"\n'
        )
        await self._write(text.encode())
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise _ShellLost("connection closed", sent=True)
                    if line.startswith(marker.encode() + b" "):
                        break
                status, nout, nerr = (int(x) for x in line.split()[1:4])
                out = await self.proc.stdout.readexactly(nout)
                err = await self.proc.stdout.readexactly(nerr)
        except TimeoutError:
            raise _ShellLost(f"no answer within {COMMAND_TIMEOUT_S:.0f} s", sent=True) from None
        except (asyncio.IncompleteReadError, ValueError) as exc:
            raise _ShellLost(f"garbled answer ({exc})", sent=True) from None
        return status, out, err.decode(errors="replace")

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.close()  # the shell exits at end of input (and removes $T)
            try:
                await asyncio.wait_for(proc.wait(), 2)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def _exec(
    argv: list[str],
    *,
    env: dict[str, str],
    stdin: bytes | None = None,
    timeout: float | None = COMMAND_TIMEOUT_S,
) -> tuple[int, str, str]:
    """Run a command (no shell); kill it if the caller is cancelled or it hangs."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        return 127, "", f"cannot run {argv[0]}: {exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except (asyncio.CancelledError, TimeoutError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await proc.wait()
        if isinstance(exc, TimeoutError):
            return 124, "", f"{argv[0]} did not answer within {timeout:.0f} s"
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
