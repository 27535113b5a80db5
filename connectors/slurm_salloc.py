"""``salloc`` and ``srun``: the two commands behind every allocation qflow holds itself.

Slurm 22.05 starts batch jobs only on its scheduler tick (``sbatch`` to script start: 0.4-0.95 s
on the test host, whatever slurm.conf says), while ``salloc --no-shell`` is granted at once
(~10 ms) and ``srun --jobid=ID`` starts a job step in ~30 ms. Two paths use that:

* a ``per-step`` location with ``submit: salloc`` (``SlurmConnector._run_in_salloc``): one
  allocation per step execution, cancelled as soon as the step ends;
* the held/malleable/auto strategies (slurm_allocation.py): long-lived allocations, one step
  per node.

Both get their allocations from :func:`salloc` and run a step's batch script (the one
``sbatch`` would get, see ``SlurmConnector._script``) with :func:`srun_script`. This module
reaches Slurm through the connector's transport only, so slurm.py can import it.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qflow.connectors.slurm import SlurmConnector

_GRANTED = re.compile(r"Granted job allocation (\d+)")


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
        rc, _, err = await connector._transport.run(argv, timeout=None)  # may queue
    except asyncio.CancelledError:
        # shielded: a second cancel must not stop the withdrawal
        await asyncio.shield(connector._transport.run(["scancel", f"--name={name}"]))
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
    argv = ["srun", f"--jobid={jobid}", f"--chdir={connector._workdir}", *options,
            "--nodes=1", "--ntasks=1", "--export=ALL", "--quiet", "bash", "-s"]  # fmt: skip
    rc, _, err = await connector._transport.run(argv, stdin=script.encode(), timeout=None)
    return rc, err.strip()
