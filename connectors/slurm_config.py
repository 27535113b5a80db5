"""The keys of a ``connector: slurm`` location, checked when the deployment is read."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from qflow.connector import ClassicalLocationConfig, EnvironmentVariables

_SLURM_TIME = re.compile(
    r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}"
    r"|UNLIMITED|INFINITE|infinite|unlimited)$"
)


class SlurmConfig(ClassicalLocationConfig):
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
        "more than this many times the mean wait it measured for getting nodes granted (at "
        "its first one when grants did not queue), unless it met other jobs on the partition "
        "(then it shrinks to one node).",
    )
    poll_interval: float = Field(
        default=0.05,
        gt=0,
        le=60,
        description="Seconds between two looks at the start and exit markers that in-flight "
        "jobs write in `workdir` (file checks on this host, or one command on the login "
        "node; no request to the Slurm controller). A job that ends is noticed within about "
        "this time.",
    )
    squeue_interval: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds between two looks at `squeue` while jobs are in flight: the "
        "safety net for jobs Slurm ends before their script does (time limit, cancel, node "
        "failure), noticed within about this time. One `squeue --me` serves every location "
        "and run of the user on this host (a shared snapshot, see docs/slurm.md).",
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

    @property
    def runs_commands_here(self) -> bool:
        """Through a ``login`` node, commands run on another site's nodes."""
        return self.login is None

    def allocation_problem(self, strategy: str) -> tuple[str, str] | None:
        if self.login and strategy != "per-step":
            return (
                f"allocation {strategy} runs steps with srun from qflow's host and is not "
                "available with login (SSH) yet",
                "use allocation: per-step for this location",
            )
        return None

    @model_validator(mode="after")
    def _strategies_need_local_commands(self) -> SlurmConfig:
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
    def _ssh_keys_need_login(self) -> SlurmConfig:
        if self.login is None and (self.ssh_key or self.ssh_port or self.ssh_options):
            raise ValueError("ssh_key, ssh_port and ssh_options only apply with login: user@host")
        for option in self.ssh_options:
            if "=" not in option or option.startswith("-"):
                raise ValueError(
                    f"{option!r} is not an ssh option; write Name=value, e.g. ProxyJump=bastion"
                )
        return self
