"""What a step's Slurm job is: its name, the resources it asks for and its batch script.

The batch script (handed to ``sbatch`` on its standard input, nothing to stage; run with
``srun ... bash -s`` inside an allocation) enters the step's working directory, rebuilds the
step's environment, runs the command with its redirections and writes the command's exit
status to a file in the location's ``workdir`` (a directory the orchestrator and the compute
nodes share).

Environment: ``sbatch`` runs with a minimal environment of its own (PATH, HOME, USER, LOGNAME,
LANG, LC_ALL, TZ and ``SLURM_CONF``, see slurm_transport.py) and ``--export=ALL`` of that, so
nothing else of the orchestrator's environment reaches the job. (``--export=NONE``, or a list
of variables, makes slurmd load the user's login environment with ``su -`` first, which was
measured to delay the command's start by 0.1-1.1 s per job.) Inside the job the script unsets
every variable except Slurm's own ``SLURM_*``/``SLURMD_*`` ones (they describe the
allocation; ``srun`` needs them), exports the step's environment exactly as cwltool built it
(plus the location's ``environment``, which wins on conflicts) and runs the command through
``env -u SHLVL -u _`` so not even bash's bookkeeping variables leak. ``SLURM_EXPORT_ENV=ALL``
is set so ``srun`` inside a step propagates that environment to its tasks.

Names: a step's job is named after its journalled execution id (:func:`job_name`), so a
crashed run's clean-up finds it by name even if it never learnt the job's id.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import uuid
from pathlib import PurePosixPath

from qflow.connector import JobSpec
from qflow.connectors.slurm_config import SlurmConfig

_SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass
class Plan:
    """Everything prepared for one submission."""

    job: JobSpec
    name: str
    """The Slurm job name (``sbatch`` or ``salloc``): :func:`job_name` of the execution id, so
    a crashed run's clean-up finds the job by it; unique either way."""
    rc_file: str
    """The exit marker: the command's exit status and the time it ended, written last."""
    started_file: str
    """The start marker: the time the script started, the job's node count and node."""
    log_file: str
    capture_file: str | None
    options: list[str]
    """What the allocation asks for (``--partition``, ``--nodes``, ...): sbatch's or salloc's."""
    args: list[str]
    """The whole ``sbatch`` command line."""
    script: str
    time_limit: str | None


def make_plan(cfg: SlurmConfig, job: JobSpec, workdir: str, srun: str) -> Plan:
    """Everything one submission of ``job`` needs: its job name, files in ``workdir``, the
    allocation's options, the ``sbatch`` command line and the batch script."""
    where = PurePosixPath(workdir)
    tag = f"{safe_name(job.name)}-{uuid.uuid4().hex[:8]}"
    capture = where / f"{tag}.out" if not (job.stdout_path and job.stderr_path) else None
    options, time_limit = resource_options(cfg, job)
    plan = Plan(
        job=job,
        name=job_name(job.execution_id) if job.execution_id else f"qflow-{tag}",
        rc_file=str(where / f"{tag}.rc"),
        started_file=str(where / f"{tag}.started"),
        log_file=str(where / f"{tag}.log"),
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
        f"--chdir={where}",
        f"--output={plan.log_file}",
        f"--error={plan.log_file}",
        *options,
    ]
    plan.script = batch_script(cfg, job, plan, srun)
    return plan


def resource_options(cfg: SlurmConfig, job: JobSpec) -> tuple[list[str], str | None]:
    """What the step's allocation asks Slurm for (``sbatch`` and ``salloc`` alike), and
    its time limit."""
    res = job.resources
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
    cpus = cpus_per_task(res.cores, cfg.cpus)
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


def batch_script(cfg: SlurmConfig, job: JobSpec, plan: Plan, srun: str) -> str:
    """The script ``sbatch`` gets on its standard input (``srun ... bash -s`` inside an
    allocation): the step's directory, environment, command and redirections, framed by its
    markers: ``plan.started_file`` first (time, nodes, node), ``plan.rc_file`` last (exit
    status, time). qflow notices a job's start and end from them (see slurm.py)."""
    q = shlex.quote
    env = {**job.env, **cfg.environment}
    exports = [
        f"export {name}={q(value)}" for name, value in env.items() if _SHELL_NAME.match(name)
    ]
    odd = [f"{name}={value}" for name, value in env.items() if not _SHELL_NAME.match(name)]
    unset = [f"-u {name}" for name in ("SHLVL", "_") if name not in env]
    runner = ["/usr/bin/env", *" ".join(unset).split(), *odd]
    prefix = ""
    if job.resources.mpi_procs:
        launch = [srun, "--export=ALL", f"--ntasks={job.resources.mpi_procs}"]
        cpus = cpus_per_task(job.resources.cores, cfg.cpus)
        if cpus:
            launch.append(f"--cpus-per-task={cpus}")
        prefix = " ".join(q(a) for a in launch) + " "
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
        # bash >= 5 has $EPOCHREALTIME (no fork); its decimal point follows the locale
        'printf "%s %s %s\\n" "${EPOCHREALTIME:-$(date +%s.%N)}" "${SLURM_JOB_NUM_NODES:-1}"'
        f' "${{SLURMD_NODENAME:-}}" > {q(plan.started_file)}',
        f"cd -- {q(job.cwd)} || {{ echo {q('qflow: cannot enter ' + job.cwd)} >&2;"
        ' printf "1 %s\\n" "${EPOCHREALTIME:-$(date +%s.%N)}" > "$__qflow_rc"; exit 1; }',
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
        'printf "%d %s\\n" "$__qflow_s" "${EPOCHREALTIME:-$(date +%s.%N)}" > "$__qflow_rc"',
        'exit "$__qflow_s"',
        "",
    ]
    return "\n".join(lines)


def one_task(cfg: SlurmConfig, job: JobSpec) -> bool:
    """Whether a step fits ``submit: salloc``: one node, one task, no MPI.

    A step that needs more runs ``srun`` itself (MPI, several tasks or nodes). Under
    ``submit: salloc`` the step's script is already an ``srun`` step, and an ``srun`` inside it
    sees that step's ``SLURM_*`` view (one task), not the allocation's: Slurm refuses ("More
    processors requested than permitted"). Such steps go through ``sbatch``.
    """
    return not job.resources.mpi_procs and cfg.nodes == 1 and cfg.tasks in (None, 1)


def cpus_per_task(cores: float | None, default: int | None) -> int | None:
    """CPUs per task: the step's cores rounded up, else the location's ``cpus``."""
    if cores:
        return max(1, math.ceil(cores))
    return default


def safe_name(name: str) -> str:
    """``name`` fit for a file or job name (no ``,``: ``scancel --name`` would split it)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60] or "step"


def job_name(execution_id: str) -> str:
    """The Slurm job name of a step execution, derived from its journalled id alone."""
    return f"qflow-{safe_name(execution_id)}"
