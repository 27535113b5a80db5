"""The keys of a ``connector: hyperqueue`` location."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from qflow.connector import ClassicalLocationConfig, EnvironmentVariables


class HyperQueueConfig(ClassicalLocationConfig):
    """Keys of a ``connector: hyperqueue`` location."""

    server_dir: str = Field(
        description="Server directory of a running HyperQueue server (`hq server start "
        "--server-dir`, default `~/.hq-server`; a `LocalCluster`'s `server_dir`). qflow "
        "connects to it as a client; it never starts a server or workers.",
    )
    cpus: int = Field(
        default=1,
        ge=1,
        description="CPUs each step's task asks HyperQueue for; a step's "
        "`ResourceRequirement` cores (rounded up) win when larger. A task asking for more "
        "CPUs than any worker has stays queued.",
    )
    time_limit: int | None = Field(
        default=None,
        ge=1,
        description="Default time limit of a step, in seconds; a step's `ToolTimeLimit` "
        "wins. The task wrapper ends the command's process group when it is exceeded "
        "(SIGTERM, SIGKILL 2 s later). Unset: no limit.",
    )
    poll_interval: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="Seconds between two checks of a job's control files (a `stat` each, "
        "by qflow and by the task wrapper). A finished task is noticed within about this "
        "time; cancellation and time limits act within about this time too.",
    )
    environment: EnvironmentVariables = Field(
        default_factory=dict,
        description="Variables added to every step's environment on this location (e.g. a "
        "PATH valid on the workers, `OMP_NUM_THREADS`); they override the step's own "
        "values of the same name.",
    )
    workdir: str | None = Field(
        default=None,
        description="Directory for the jobs' control files (specification, start and exit "
        "markers, captured output). qflow and the workers must both see it (a shared "
        "filesystem when workers run on other hosts). Unset: a fresh directory under this "
        "host's temporary directory, removed when the run ends (fine when the workers run "
        "on this host).",
    )
    python: str | None = Field(
        default=None,
        description="Python interpreter (3.8 or later, standard library only) that runs "
        "the task wrapper on the workers. Unset: the interpreter running qflow.",
    )

    @field_validator("server_dir", "workdir", "python")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return os.path.expanduser(value) if value is not None else None
