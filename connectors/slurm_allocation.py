"""Held, malleable and auto allocation strategies of a Slurm location.

``per-step`` (the default) gives every step execution an allocation of its own (a batch
job, or ``salloc`` + ``srun`` with ``submit: salloc``). The other strategies keep allocations
(``salloc --no-shell``) and run each step inside them with ``srun --jobid=ID -w NODE``, one
node per step, so no scheduler tick is waited for (both through slurm_salloc.py):

* ``held`` — the papers' baseline: all the location's nodes (``held_nodes``) are allocated at
  the first step and kept until the run ends; idle time during quantum phases is paid for.
* ``malleable`` — a one-node *anchor* allocation for the whole run, plus an *extension* with
  the other nodes, taken when a classical phase needs more than one node and released when a
  quantum phase starts. (Slurm 22.05 without its accounting daemon cannot resize one job
  twice, see docs/strategies.md, so shrinking and growing is done with a second job.)
* ``auto`` — one-node allocations, asked in parallel as steps need nodes (an anchor, then
  extensions); a node no step waits for is given back as soon as its step ends (the anchor
  is kept), and at each quantum phase it decides from whether this run has met other jobs on
  the partition and what it measured (earlier quantum phases, the waits for earlier grants):
  *shrink* to the anchor (contention), *release* everything (no contention, and the phase is
  expected to outlast ``auto_keep_factor`` times the mean wait for getting nodes), or *keep*
  all nodes.

Every allocation is reported (nodes × its Slurm lifetime) as held node-seconds; steps inside
an allocation report the node they used but no node-seconds of their own.

An allocation is not one step's: it is journalled on its own (kind ``slurm-allocation``,
handle ``{"name": its unique job name}``) before ``salloc`` asks for it, its job id once
granted, and marked ended only once Slurm reports it ended. After a crash, ``qflow run
--resume`` ends it by that name (``SlurmConnector.cancel_orphan``), so the resumed run's own
allocation is not left pending behind it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from qflow.connector import AllocationRecord, JobOutcome, JobSpec, JobStartedCallback
from qflow.connectors import slurm_auto_rule as auto_rule
from qflow.connectors.slurm_outcome import collect, read_exit_file
from qflow.connectors.slurm_salloc import salloc, srun_script
from qflow.connectors.transport import shielded
from qflow.rundir.journal import Resource

if TYPE_CHECKING:
    from qflow.connectors.slurm import SlurmConnector

_logger = logging.getLogger("qflow.connectors.slurm")


class _Allocation:
    """One ``salloc --no-shell`` job, its nodes and its journal record."""

    def __init__(
        self, jobid: str, nodes: list[str], kind: str, granted: float, resource: Resource
    ) -> None:
        self.jobid, self.nodes, self.kind, self.granted = jobid, nodes, kind, granted
        self.resource = resource
        self.busy: set[str] = set()


class SlurmAllocations:
    """The allocations of one Slurm location under a held/malleable/auto strategy."""

    def __init__(
        self,
        connector: SlurmConnector,
        strategy: str,
        report: Callable[[AllocationRecord], None] | None,
    ) -> None:
        self.connector = connector
        self.strategy = strategy
        self.size = connector.config.held_nodes or connector.config.slots * connector.config.nodes
        self._report = report
        self._held: list[_Allocation] = []
        self._changed = asyncio.Condition()
        self._growing: dict[asyncio.Task[None], str] = {}
        """Grows in flight -> the kind of allocation each asks for."""
        self._grow_error: Exception | None = None
        self._grant_waits: list[float] = []
        self._contended = False
        self._last_decision: auto_rule.Decision | None = None
        """Seen once in this run: a grant that had to queue, or jobs pending at a decision."""
        self._quantum_since: float | None = None
        self._quantum_phases: list[float] = []
        self._releasing: set[asyncio.Task[None]] = set()
        self._expected: dict[str, float] = {}
        """Step path -> how long its last execution here took (longest-first order)."""
        self._queue: list[tuple[float, int]] = []
        self._tickets = itertools.count()

    # -- steps ------------------------------------------------------------------------------
    async def run(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        allocation, node = await self._take_node(self._expected.get(job.step, 0.0))
        plan = self.connector.plan(job)
        started = time.time()
        on_started(f"{allocation.jobid}@{node}")
        try:
            rc, err = await srun_script(
                self.connector, allocation.jobid, plan.script, [f"--nodelist={node}"]
            )
        finally:
            async with self._changed:
                allocation.busy.discard(node)
                self._release_idle()
                self._changed.notify_all()
        ended = time.time()
        self._expected[job.step] = ended - started
        exit_file = await read_exit_file(self.connector.transport, plan.rc_file, wait=False)
        await collect(self.connector.transport, plan)
        code = exit_file if exit_file is not None else (rc or 1)
        message = None
        if code != 0:
            detail = f": {err[-300:]}" if err else ""
            message = (
                f"exited with status {code} on {node} (in Slurm job {allocation.jobid}){detail}"
            )
        return JobOutcome(code, message, started, ended, nodes=1, node_seconds=0.0,
                          external_id=f"{allocation.jobid}@{node}")  # fmt: skip

    async def _take_node(self, expected: float) -> tuple[_Allocation, str]:
        """A free node of the held allocations, growing them in the background if needed.

        Waiting steps get nodes longest-expected first (``expected``: how long the same step
        took in an earlier iteration, 0 if unknown; ties in arrival order), so with fewer nodes
        than steps the phase is not stretched by its longest step starting last.
        A step never waits on its own grow: if a node of ours frees first, it takes that one,
        and a grow nobody waits for any more is withdrawn (two workflows must not block each
        other with requests they no longer need).
        """
        ticket = (-expected, next(self._tickets))
        async with self._changed:
            self._queue.append(ticket)
            try:
                while True:
                    for allocation in self._held if min(self._queue) == ticket else ():
                        free = [n for n in allocation.nodes if n not in allocation.busy]
                        if free:
                            allocation.busy.add(free[0])
                            return allocation, free[0]
                    if self._grow_error is not None:
                        error, self._grow_error = self._grow_error, None
                        raise error
                    self._start_grows()
                    await self._changed.wait()
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may take a free node now
                if not self._queue:
                    for task in self._growing:
                        task.cancel()

    def _start_grows(self) -> None:
        """Ask for the nodes the waiting steps lack: ``auto`` one node per allocation, one
        ``salloc`` per missing node, all at once; the others everything missing in one."""
        held = sum(len(a.nodes) for a in self._held)
        if self.strategy != "auto":
            if held < self.size and not self._growing:
                kind = "held" if self.strategy == "held" else self._next_kind()
                self._grow_soon(self.size - held, kind)
            return
        free = sum(len(a.nodes) - len(a.busy) for a in self._held)
        missing = min(len(self._queue) - free, self.size - held) - len(self._growing)
        for _ in range(missing):
            self._grow_soon(1, self._next_kind())

    def _next_kind(self) -> str:
        """``anchor`` unless one is held or asked for already, else ``extension``."""
        kinds = [a.kind for a in self._held] + list(self._growing.values())
        return "extension" if "anchor" in kinds else "anchor"

    def _grow_soon(self, count: int, kind: str) -> None:
        task = asyncio.get_running_loop().create_task(self._grow(count, kind))
        self._growing[task] = kind

    def _release_idle(self) -> None:
        """Give back the idle nodes nobody waits for, when the strategy says so (auto)."""
        if self._queue or not auto_rule.release_when_idle(self.strategy, self._last_decision):
            return
        for allocation in list(self._held):
            if allocation.kind != "anchor" and not allocation.busy:
                self._release_soon(allocation)

    # -- allocations ------------------------------------------------------------------------
    async def _grow(self, missing: int, kind: str) -> None:
        """Allocate ``missing`` nodes (held, an extension), or one (an anchor)."""
        count = 1 if kind == "anchor" else missing
        exclude = [n for a in self._held for n in a.nodes]
        asked = time.time()
        try:
            allocation = await self._salloc(count, kind, exclude)
            self._grant_waits.append(time.time() - asked)
            async with self._changed:
                self._held.append(allocation)
                self._release_idle()  # granted once nobody needed it any more
        except asyncio.CancelledError:
            pass  # withdrawn: nobody waits for these nodes any more
        except Exception as exc:  # noqa: BLE001 - handed to the waiting steps
            self._grow_error = exc
        finally:
            async with self._changed:
                self._growing.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
                self._changed.notify_all()

    async def _salloc(self, count: int, kind: str, exclude: list[str]) -> _Allocation:
        cfg = self.connector.config
        name = f"qflow-{kind}-{uuid.uuid4().hex[:8]}"
        # an extension takes what it can get (1..count): two malleable runs each holding an
        # anchor must not wait for each other's nodes forever
        nodes = f"1-{count}" if kind == "extension" and count > 1 else str(count)
        # --exclusive: a held node is a whole node (as node-seconds count it), not shared
        options = ["--exclusive", f"--nodes={nodes}"]
        if cfg.partition:
            options.append(f"--partition={cfg.partition}")
        if exclude:
            options.append(f"--exclude={','.join(exclude)}")
        for flag, value in (("--account", cfg.account), ("--qos", cfg.qos), ("--time", cfg.time)):
            if value is not None:
                options.append(f"{flag}={value}")
        journal = self.connector.journal
        resource = journal.intend("slurm-allocation", self.connector.location, {"name": name})
        jobid: str | None = None
        try:
            jobid, err = await salloc(self.connector, name, options)
            if "queued and waiting for resources" in err:
                self._contended = True
            if jobid is None:
                raise RuntimeError(f"salloc of {count} node(s) on {self.connector.location} "
                                   f"failed: {err[-500:]}")  # fmt: skip
            resource = journal.exists(resource, jobid)
            _, out, _ = await self.connector.transport.run(
                ["squeue", "--noheader", "--jobs", jobid, "--format=%N"]
            )
            hostnames = ["scontrol", "show", "hostnames", out.strip()]
            _, hosts, _ = await self.connector.transport.run(hostnames)
        except BaseException:  # refused, withdrawn, or granted but not ours yet: ended
            await shielded(self.connector.end_job(jobid, resource))
            raise
        return _Allocation(jobid, hosts.split(), kind, time.time(), resource)

    def _release_soon(self, allocation: _Allocation) -> None:
        """Stop using ``allocation`` now; cancel and account for it in the background, so a
        quantum step never waits for Slurm to end the job (``close`` waits for it)."""
        self._held.remove(allocation)
        task = asyncio.get_running_loop().create_task(self._release(allocation))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, allocation: _Allocation) -> None:
        async with self._changed:
            if allocation in self._held:
                self._held.remove(allocation)
        # Slurm's own start/end times; the journal's record ends once Slurm confirms it
        info = await self.connector.end_job(allocation.jobid, allocation.resource)
        started = info.start if info and info.start else allocation.granted
        ended = info.end if info and info.end else time.time()
        if self._report is not None:
            nodes = len(allocation.nodes)
            self._report(AllocationRecord(
                location=self.connector.location, external_id=allocation.jobid,
                kind=allocation.kind, nodes=nodes, started=started, ended=ended,
                node_seconds=nodes * max(0.0, ended - started),
            ))  # fmt: skip

    # -- phases -----------------------------------------------------------------------------
    async def quantum_phase(self, started: bool) -> None:
        """A quantum phase begins (no classical step running anywhere) or ends."""
        now = time.time()
        if not started:
            if self._quantum_since is not None:
                self._quantum_phases.append(now - self._quantum_since)
                self._quantum_since = None
            return
        self._quantum_since = now
        decision = await self.decide()
        if decision == "keep":
            return
        async with self._changed:
            for allocation in list(self._held):
                if not allocation.busy and (decision == "release" or allocation.kind != "anchor"):
                    self._release_soon(allocation)

    async def decide(self) -> str:
        """At a quantum phase: ``keep`` every node, ``shrink`` to the anchor, or ``release``
        all (held: keep; malleable: shrink; auto: the rule of docs/strategies.md, in
        slurm_auto_rule.py)."""
        phases, waits = self._quantum_phases, self._grant_waits
        others_pending = False
        if auto_rule.needs_pending_check(self.strategy, phases, waits, self._contended):
            others_pending = await self._others_waiting()
        decision = auto_rule.decide(self.strategy, phases, waits, contended=self._contended,
                                    others_pending=others_pending,
                                    keep_factor=self.connector.config.auto_keep_factor)  # fmt: skip
        if others_pending:
            self._contended = True  # remembered: contention seen once is likely to come back
        self._last_decision = decision
        return decision

    async def _others_waiting(self) -> bool:
        cfg = self.connector.config
        argv = ["squeue", "--noheader", "--states=PENDING", "--format=%i"]
        if cfg.partition:
            argv.append(f"--partition={cfg.partition}")
        rc, out, _ = await self.connector.transport.run(argv)
        return rc == 0 and bool(out.strip())

    async def close(self) -> None:
        """Release everything (end of run, interrupt)."""
        growing = list(self._growing)
        for task in growing:
            task.cancel()
        await asyncio.gather(*growing, return_exceptions=True)
        for allocation in list(self._held):
            await self._release(allocation)
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
