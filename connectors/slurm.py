"""The ``slurm`` connector: every step execution is one Slurm job.

Strategy "hold nodes only while the step runs" (``per-step``): one ``sbatch --parsable`` per
step execution, released by Slurm as soon as the command ends. The modules of the connector:

* slurm_config.py: the location's keys;
* slurm_script.py: the job's name, resource options and batch script;
* slurm_transport.py: where the Slurm commands run (this host, or a login node over SSH with
  ``login``), on the generic transports of transport.py and transport_ssh.py;
* slurm_jobs.py: Slurm's records of the jobs (``squeue``, ``sacct -c``, ``scontrol``) and
  ending jobs (``scancel`` and a bounded wait);
* slurm_outcome.py: a finished step's exit code, message, times and node-seconds;
* slurm_salloc.py: ``submit: salloc``, a step of one node and one task in an allocation of
  its own (``salloc`` + ``srun``: no scheduler tick to wait for, unlike ``sbatch``);
* slurm_allocation.py: the held/malleable/auto strategies, allocations kept across steps.

Completion without loading the controller: each job's batch script writes a start marker
first and an exit marker last (slurm_script.py), and one poller task per connector instance
looks for *all* in-flight jobs' markers every ``poll_interval`` (file checks on the shared
``workdir``: no Slurm request), waking the waiting coroutines. A job that ran to its end
needs no Slurm request after ``sbatch``: its outcome comes from its markers. ``squeue``
runs once per ``squeue_interval`` as a safety net for jobs Slurm ends before their script
does (time limit, cancel, node failure); such a job keeps its final state in
``squeue --states=all`` for ``MinJobAge`` seconds, and one that already left it is looked up
in ``sacct -c`` (jobcomp) and ``scontrol show job``.

Retries are the engine's (``retries`` of the location); jobs are submitted with
``--no-requeue`` so Slurm never reruns a step behind qflow's back. Cancelling :meth:`run`
``scancel``s the job and waits (bounded) until Slurm reports it ended (a ``salloc`` request
still pending is withdrawn by its unique job name).

Crashes: a step's job is named after its journalled execution id (``qflow-<execution id>``,
:func:`~qflow.connectors.slurm_script.job_name`), before it exists, so after a ``kill -9`` of
qflow ``cancel_orphan`` finds it by that name even if the crash came before its id was known
(a job ``sbatch`` submitted, a ``salloc`` request still pending), and by its id when it was.
Allocations kept across steps are journalled by slurm_allocation.py under their own names.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shlex
import time

from qflow.connector import (
    STANDALONE,
    Connector,
    ConnectorContext,
    JobOutcome,
    JobSpec,
    JobStartedCallback,
)
from qflow.connectors.slurm_allocation import SlurmAllocations
from qflow.connectors.slurm_config import SlurmConfig
from qflow.connectors.slurm_jobs import (
    STARTED_STATES,
    TERMINAL_STATES,
    JobInfo,
    SlurmJobs,
    orphan_handles,
)
from qflow.connectors.slurm_outcome import batch_outcome, marker_outcome
from qflow.connectors.slurm_salloc import run_in_salloc
from qflow.connectors.slurm_script import Plan, make_plan, one_task, safe_name
from qflow.connectors.slurm_snapshot import SqueueSnapshots
from qflow.connectors.slurm_transport import SlurmError, cluster_identity, slurm_transport
from qflow.connectors.transport import Transport, shielded
from qflow.rundir.journal import Resource

__all__ = ["SlurmConnector", "SlurmError"]

_logger = logging.getLogger("qflow.connectors.slurm")

SUBMIT_CONCURRENCY = 8
"""``sbatch`` calls of one location in flight at the same time."""
VANISHED_POLLS = 2
"""Consecutive polls a job must be missing from ``squeue`` before it counts as gone."""


class SlurmConnector(Connector[SlurmConfig]):
    """Runs each step execution as its own Slurm job (``sbatch``, or ``salloc`` + ``srun``)."""

    Config = SlurmConfig

    def __init__(
        self, location: str, config: SlurmConfig, context: ConnectorContext = STANDALONE
    ) -> None:
        super().__init__(location, config, context)
        self.transport: Transport = slurm_transport(config, location)
        self.jobs = SlurmJobs(self.transport, location, config.poll_interval)
        self.snapshots = SqueueSnapshots(self.jobs, cluster_identity(config),
                                         config.squeue_interval)  # fmt: skip
        self.workdir: str | None = None
        """The location's work directory (exit-status files, logs), once prepared."""
        self.salloc_names: set[str] = set()
        """Job names of the ``submit: salloc`` steps in flight (pending or running)."""
        self._tracked: dict[str, _Tracked] = {}
        self._poller: asyncio.Task[None] | None = None
        self._submit_slots: asyncio.Semaphore | None = None
        self._prepare_lock: asyncio.Lock | None = None
        self._own_workdir = False
        self._srun = "srun"
        self._poll_errors = 0
        self._allocations: dict[str, SlurmAllocations] = {}
        """Per strategy (held, malleable, auto) its allocations: a binding may override it."""

    @property
    def strategy(self) -> str:
        """per-step, held, malleable or auto: the location's own, else the deployment's."""
        return self.config.allocation or self.context.allocation_policy

    async def quantum_phase(self, started: bool) -> None:
        for allocations in list(self._allocations.values()):
            await allocations.quantum_phase(started)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the SSH session (if any), create the work directory, check the controller."""
        await self._prepare()
        rc, out, err = await self.transport.run(["scontrol", "ping"])
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
        for name in list(self.salloc_names):  # submit: salloc, by name: pending ones too
            await self.jobs.scancel([], name)
        in_flight = list(self._tracked.values())  # a job whose exit marker is there may still
        if in_flight:  # be completing: Slurm says when it is gone
            seen: dict[str, JobInfo] = {}
            try:
                seen = await self.jobs.end_jobs([t.jobid for t in in_flight])
            except SlurmError as exc:
                _logger.warning("%s", exc)
            for tracked in in_flight:
                tracked.final = tracked.final or seen.get(tracked.jobid)
                tracked.done.set()
        # let the woken run() calls collect their outcomes before the work directory goes
        deadline = time.monotonic() + 5
        while (self._tracked or self.salloc_names) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._own_workdir and self.workdir is not None:
            await self.transport.remove_tree(self.workdir)
        self.workdir = None
        self._own_workdir = False
        await self.transport.close()

    async def cancel_orphan(self, resource: Resource) -> None:
        """End a job a crashed run left behind (found by its name, and by its id if known) and
        wait (bounded) until Slurm reports it ended; a job already gone is fine.

        An ``execution`` is found by the job name derived from its id, a step of a held
        allocation (``JOBID@NODE``) by its allocation, a ``slurm-allocation`` by the name it
        was journalled with. Raises :class:`SlurmError` if a job outlives ``CANCEL_WAIT_S``.
        """
        name, ids = orphan_handles(resource)
        await self._prepare()
        await self.jobs.end_jobs(ids, name)

    async def end_job(self, jobid: str | None, resource: Resource | None = None) -> JobInfo | None:
        """``scancel`` a job (and every job of the journalled ``resource``'s name) and wait
        (bounded) until Slurm reports it ended, then mark ``resource`` ended in the journal.

        Returns the job's final record (Slurm's start and end times, nodes); None if Slurm has
        none or it did not end in time (logged; the journal then keeps the resource alive).
        """
        name = resource.handle.get("name") if resource is not None else None
        try:
            seen = await self.jobs.end_jobs([jobid] if jobid else [], name)
        except SlurmError as exc:
            _logger.warning("%s", exc)
            return None
        if resource is not None:
            self.journal.ended(resource)
        if jobid is None:
            return None
        return seen.get(jobid) or await self.jobs.lookup_finished(jobid)

    async def _prepare(self) -> None:
        """Once: the SSH session, the work directory and the path of ``srun``."""
        if self._prepare_lock is None:
            self._prepare_lock = asyncio.Lock()
        async with self._prepare_lock:
            if self.workdir is not None:
                return
            await self.transport.open()
            self.workdir, self._own_workdir = await self.transport.make_workdir(
                self.config.workdir, safe_name(self.location)
            )
            self._srun = await self.transport.which("srun") or "srun"

    # -- one step execution ---------------------------------------------------------------
    async def run(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        await self._prepare()
        strategy = job.allocation or self.strategy  # the step's binding, else the location's
        if strategy != "per-step":
            if strategy not in self._allocations:
                self._allocations[strategy] = SlurmAllocations(
                    self, strategy, self.context.report_allocation
                )
            return await self._allocations[strategy].run(job, on_started)
        if self.config.submit == "salloc" and one_task(self.config, job):
            return await run_in_salloc(self, job, on_started)
        plan = self.plan(job)
        tracked = await self._submit(plan, on_started)
        try:
            await tracked.done.wait()
        except asyncio.CancelledError:
            await shielded(self._cancel(tracked, plan))
            raise
        try:
            if tracked.final is None and tracked.exit_marked:
                outcome = await marker_outcome(self.transport, tracked.jobid, plan)
                if outcome is not None:
                    self._report_started(tracked)
                    return outcome
            info = tracked.final or await self.jobs.lookup_finished(tracked.jobid)  # left squeue
            if info is not None and info.ran:
                self._report_started(tracked)
            return await batch_outcome(self.transport, tracked.jobid, info, plan)
        finally:
            await shielded(self._forget(tracked, plan))

    def plan(self, job: JobSpec) -> Plan:
        """The step's job: name, files, options and batch script (after :meth:`_prepare`)."""
        if self.workdir is None:
            raise RuntimeError("SlurmConnector.plan before _prepare")
        return make_plan(self.config, job, self.workdir, self._srun)

    async def _submit(self, plan: Plan, on_started: JobStartedCallback) -> _Tracked:
        """``sbatch`` the job and register it with the poller; a cancel never orphans a job."""
        task = asyncio.ensure_future(self._sbatch(plan))
        try:
            jobid = await asyncio.shield(task)
        except asyncio.CancelledError:
            # the job may be submitted already: learn its id, then cancel it
            async def cleanup() -> None:
                with contextlib.suppress(Exception):
                    jobid = await task
                    tracked = self._track(jobid, None, plan)
                    await self._cancel(tracked, plan)

            await shielded(cleanup())
            raise
        return self._track(jobid, on_started, plan)

    async def _sbatch(self, plan: Plan) -> str:
        if self._submit_slots is None:
            self._submit_slots = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        delays = (0.2, 1.0, 3.0)
        async with self._submit_slots:
            for attempt in range(len(delays) + 1):
                rc, out, err = await self.transport.run(plan.args, stdin=plan.script.encode())
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

    def _track(self, jobid: str, on_started: JobStartedCallback | None, plan: Plan) -> _Tracked:
        tracked = _Tracked(jobid=jobid, on_started=on_started, plan=plan)
        self._tracked[jobid] = tracked
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_loop(), name=f"qflow-slurm-poller-{self.location}"
            )
        return tracked

    async def _forget(self, tracked: _Tracked, plan: Plan) -> None:
        self._tracked.pop(tracked.jobid, None)
        files = [p for p in (plan.rc_file, plan.started_file, plan.log_file, plan.capture_file)
                 if p]  # fmt: skip
        await self.transport.remove(files)

    async def _cancel(self, tracked: _Tracked, plan: Plan) -> None:
        """``scancel`` the job and wait (bounded) until Slurm reports it ended: even when its
        exit marker is there (the script may have written it while being stopped), since
        only Slurm knows when the job's processes are gone."""
        try:
            await self.jobs.end_jobs([tracked.jobid])
        except SlurmError as exc:
            _logger.warning("%s", exc)
        tracked.done.set()
        await self._forget(tracked, plan)

    # -- the poller ----------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        """Every ``poll_interval`` a look at all in-flight jobs' markers; every
        ``squeue_interval`` one ``squeue`` for them all. Wakes the jobs' coroutines."""
        last_squeue = time.monotonic()
        while True:
            if not any(not t.done.is_set() for t in self._tracked.values()):
                return
            await asyncio.sleep(self.config.poll_interval)
            waiting = [t for t in self._tracked.values() if not t.done.is_set()]
            if not waiting:
                return
            try:
                await self._look_at_markers(waiting)
                if time.monotonic() - last_squeue >= self.config.squeue_interval:
                    last_squeue = time.monotonic()
                    await self._look_at_squeue([t for t in waiting if not t.done.is_set()])
            except Exception as exc:  # noqa: BLE001 - the poller must outlive a bad poll
                self._poll_errors += 1
                if self._poll_errors in (1, 10) or self._poll_errors % 100 == 0:
                    _logger.warning("location %s: %s (will retry)", self.location, exc)
                continue
            self._poll_errors = 0

    async def _look_at_markers(self, waiting: list[_Tracked]) -> None:
        """Start and exit markers: a job that wrote its exit marker is done (its script ran
        to its end); one that wrote its start marker is running."""
        files = [t.plan.rc_file for t in waiting]
        files += [t.plan.started_file for t in waiting if not t.started_reported]
        present = await self.transport.existing(files)
        for tracked in waiting:
            if tracked.plan.started_file in present:
                self._report_started(tracked)
            if tracked.plan.rc_file in present:
                tracked.exit_marked = True
                tracked.done.set()

    async def _look_at_squeue(self, waiting: list[_Tracked]) -> None:
        """The safety net: jobs Slurm ended (or lost) without their exit marker, from the
        snapshot of ``squeue`` this user's runs share (:mod:`slurm_snapshot`)."""
        if not waiting:
            return
        snapshot = await self.snapshots.current()
        for tracked in waiting:
            info = snapshot.infos.get(tracked.jobid)
            if info is None:
                if tracked.submitted >= snapshot.taken:
                    continue  # submitted after the snapshot was asked for
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


@dataclasses.dataclass
class _Tracked:
    """An in-flight job, as the poller sees it."""

    jobid: str
    on_started: JobStartedCallback | None
    plan: Plan
    submitted: float = dataclasses.field(default_factory=time.time)
    """When qflow learnt its id (``sbatch`` had returned)."""
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    exit_marked: bool = False
    """Its exit marker was seen: the script ran to its end (Slurm needs no asking)."""
    final: JobInfo | None = None
    started_reported: bool = False
    missing: int = 0
