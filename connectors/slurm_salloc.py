"""``salloc`` and ``srun``: the two commands behind every allocation qflow holds itself, and
the ``submit: salloc`` path of a ``per-step`` location.

Slurm 22.05 starts batch jobs only on its scheduler tick (``sbatch`` to script start: 0.4-0.95 s
on the test host, whatever slurm.conf says), while ``salloc --no-shell`` is granted at once
(~10 ms) and ``srun --jobid=ID`` starts a job step in ~30 ms. Two paths use that:

* a ``per-step`` location with ``submit: salloc`` (:func:`run_in_salloc`): a step of one node
  and one task gets an allocation of its own from ``salloc`` (the same resource options
  ``sbatch`` would get, under the step's job name), its job id is reported at once, the same
  batch script runs in it with ``srun ... bash -s`` and the allocation is ``scancel``led as
  soon as the script ends; its times and node-seconds are Slurm's record of the allocation.
  MPI steps and steps of several nodes or tasks still use ``sbatch``: their command runs
  ``srun`` itself, and an ``srun`` inside an ``srun`` step sees that step's ``SLURM_*`` view,
  not the allocation's ("More processors requested than permitted");
* the held/malleable/auto strategies (slurm_allocation.py): long-lived allocations, one step
  per node.

Both get their allocations from :func:`salloc` and run a step's batch script (the one
``sbatch`` would get, see slurm_script.py) with :func:`srun_script`. This module reaches the
connector only through its public attributes, so slurm.py can import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import time
from typing import TYPE_CHECKING

from qflow.connector import JobOutcome, JobSpec, JobStartedCallback
from qflow.connectors.slurm_jobs import TERMINAL_STATES, JobInfo
from qflow.connectors.slurm_outcome import collect, read_exit_file, salloc_outcome
from qflow.connectors.slurm_transport import SlurmError
from qflow.connectors.transport import shielded

if TYPE_CHECKING:
    from qflow.connectors.slurm import SlurmConnector

_GRANTED = re.compile(r"Granted job allocation (\d+)")
SETTLE_S = 2.0
"""How long a step whose srun died waits for Slurm to show why (its allocation's state)."""


async def salloc(
    connector: SlurmConnector, name: str, options: list[str]
) -> tuple[str | None, str]:
    """``salloc --no-shell --job-name=NAME OPTIONS``: the granted job id (None if refused)
    and salloc's messages.

    Waits as long as Slurm keeps the request pending. ``name`` must be unique: if the caller
    is cancelled meanwhile, killing ``salloc`` would leave the pending request behind (its id
    is not known yet), so it is withdrawn with ``scancel --name``.
    """
    argv = ["salloc", "--no-shell", f"--job-name={name}", *options]
    try:
        rc, _, err = await connector.transport.run(argv, timeout=None)  # may queue
    except asyncio.CancelledError:
        # shielded: a second cancel must not stop the withdrawal
        await asyncio.shield(connector.jobs.scancel([], name))
        raise
    granted = _GRANTED.search(err)
    # granted means the allocation exists, whatever salloc's status: the caller owns it
    return (granted.group(1) if granted else None), (err.strip() or f"salloc exited {rc}")


async def srun_script(
    connector: SlurmConnector, jobid: str, script: str, options: list[str]
) -> tuple[int, str]:
    """Run a step's batch script as a one-task step of allocation ``jobid``; srun's exit
    status and its messages.

    The script comes on srun's standard input (``bash -s``): nothing to stage. It runs in
    the location's work directory (shared with the nodes, unlike qflow's own) and rebuilds
    the step's environment itself, as under ``sbatch``. No timeout: it lasts as the step.
    """
    argv = ["srun", f"--jobid={jobid}", f"--chdir={connector.workdir}", *options,
            "--nodes=1", "--ntasks=1", "--export=ALL", "--quiet", "bash", "-s"]  # fmt: skip
    rc, _, err = await connector.transport.run(argv, stdin=script.encode(), timeout=None)
    return rc, err.strip()


async def run_in_salloc(
    connector: SlurmConnector, job: JobSpec, on_started: JobStartedCallback
) -> JobOutcome:
    """The step in an allocation of its own (``salloc``), run with ``srun`` and cancelled
    as soon as it ends: no scheduler tick to wait for, unlike ``sbatch``.

    The job id is reported as soon as it is granted; a crashed run's resume finds the
    allocation by it, or by its name (``cancel_orphan``) if the crash came first.
    """
    plan = connector.plan(job)
    name = plan.name  # unique: a pending request is withdrawn by its name
    connector.salloc_names.add(name)
    transport = connector.transport
    try:
        jobid, err = await salloc(connector, name, plan.options)
        if jobid is None:
            raise SlurmError(
                f"salloc refused step {job.name} on location {connector.location}: "
                f"{err[-500:]} (options: {shlex.join(plan.options)})"
            )
        granted = time.time()
        try:
            on_started(jobid)
            cpus = [o for o in plan.options if o.startswith("--cpus-per-task=")]
            rc, err = await srun_script(connector, jobid, plan.script, cpus)  # as sbatch's env
            code = await read_exit_file(transport, plan.rc_file, wait=False)
            ended_by_slurm = None
            if code is None:  # the script did not finish: did Slurm end the allocation?
                ended_by_slurm = await _ended_by_slurm(connector, jobid)
                code = await read_exit_file(transport, plan.rc_file, wait=True)
        finally:
            final = await shielded(connector.end_job(jobid))
        return await salloc_outcome(
            transport, jobid, plan, granted, (code, rc, err), ended_by_slurm, final
        )
    finally:
        connector.salloc_names.discard(name)
        await shielded(collect(transport, plan))


async def _ended_by_slurm(connector: SlurmConnector, jobid: str) -> JobInfo | None:
    """The allocation's final record if Slurm ends it within ``SETTLE_S`` (a cancel, a
    time limit: srun learns of it a little before squeue shows the final state)."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        with contextlib.suppress(SlurmError):
            info = (await connector.jobs.squeue([jobid])).get(jobid)
            if info is None or info.state in TERMINAL_STATES:
                return info
        await asyncio.sleep(0.05)
    return None
