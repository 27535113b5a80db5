"""The execution-connector contract.

A connector decides *where a step's command runs* (this host, a Slurm job, a HyperQueue task).
The engine hands it a fully prepared :class:`JobSpec` (command line, environment, working
directory and redirections exactly as cwltool would run them; for a step in a software
container, the command is the container runtime's, as cwltool builds it) and awaits
:meth:`Connector.run`.
Cancelling that coroutine (``asyncio.CancelledError``) must release everything the job holds:
kill the process group, ``scancel`` the job, cancel the task. Connectors never see CWL.

Third-party packages register connectors through the ``qflow.connectors`` entry-point group
(:mod:`qflow.registry`); the built-ins are registered the same way in qflow's own
``pyproject.toml``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Annotated, ClassVar, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from qflow.rundir.journal import NO_JOURNAL, Journal, Resource


def _check_variable_names(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"{name!r} is not a valid environment variable name")
    return value


EnvironmentVariables = Annotated[dict[str, str], AfterValidator(_check_variable_names)]
"""Config field type for variables a connector adds to steps' environments (names checked)."""


class LocationConfig(BaseModel):
    """Keys every location accepts, whatever its connector.

    A connector's own ``Config`` subclasses this and adds its keys; unknown keys are refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    connector: str = Field(description="Name of the connector that serves this location.")
    slots: int = Field(
        default=1,
        ge=1,
        description="How many step executions may run on this location at the same time.",
    )
    nodes: int = Field(
        default=0,
        ge=0,
        description="Classical nodes one step execution holds here (for node-seconds). "
        "Connectors that learn the real figure from the resource manager override it.",
    )
    quantum: bool = Field(
        default=False,
        description="True for a classical location that holds a QPU for its steps (e.g. a "
        "Slurm partition with a qpu GRES): its step executions are reported as quantum.",
    )
    retries: int = Field(
        default=0,
        ge=0,
        description="How many times a failed step execution is resubmitted on this location.",
    )
    placement: Literal["first", "earliest-finish"] | None = Field(
        default=None,
        description="Placement rule of the steps whose binding lists this location first "
        "(overrides policy.placement; a binding's own `placement` overrides it).",
    )

    def allocation_problem(self, strategy: str) -> tuple[str, str] | None:
        """Why this location cannot allocate with ``strategy``: (what, fix); None if it can.

        Checked for ``policy.allocation`` and bindings' ``allocation`` before a run starts.
        Connectors that always allocate per step ignore strategies, so the default is None.
        """
        return None


ContainerRuntime = Literal["docker", "podman", "singularity", "apptainer"]
"""The software-container runtimes a step with a ``DockerRequirement`` can run in."""


class ClassicalLocationConfig(LocationConfig):
    """Keys of every location that runs step commands (this host, Slurm, HyperQueue)."""

    container_runtime: ContainerRuntime | None = Field(
        default=None,
        description="Runtime that runs the steps with a `DockerRequirement` here: docker, "
        "podman, or singularity/apptainer (Apptainer's `singularity` command; the HPC "
        "case). Unset: the run's choice (`--podman`, `--singularity`, else docker). "
        "`--no-container` runs every step without one (docs/containers.md).",
    )

    @property
    def runs_commands_here(self) -> bool:
        """Whether step commands run on hosts that share this host's software (its
        container runtime and images are checked before a run); a connector whose commands
        run elsewhere (a Slurm ``login``) says False."""
        return True


@dataclasses.dataclass(frozen=True)
class Resources:
    """What the step asked for (CWL ResourceRequirement, ToolTimeLimit, MPIRequirement).

    Handed to the connector as requested; never checked against this host for remote
    locations.
    """

    cores: float | None = None
    ram_mib: float | None = None
    tmpdir_mib: float | None = None
    outdir_mib: float | None = None
    time_limit_s: int | None = None
    mpi_procs: int | None = None


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One step execution, ready to run: what cwltool's ``_execute`` would start."""

    name: str
    """Unique within a run (cwltool's job name, e.g. ``annealing_3``)."""
    step: str
    """Full step path in the workflow, e.g. ``/loop/annealing``."""
    iteration: int | None
    """Innermost ``cwltool:Loop`` iteration (0-based), ``None`` outside loops."""
    command: list[str]
    cwd: str
    env: dict[str, str]
    stdin_path: str | None
    stdout_path: str | None
    """File the command's stdout goes to; ``None`` means qflow's own stderr (as cwltool)."""
    stderr_path: str | None
    resources: Resources
    allocation: str | None = None
    """Allocation strategy the step's binding sets (``bindings``); None: the location's."""
    container_image: str | None = None
    """The software-container image ``command`` runs in (a ``DockerRequirement``); None:
    none. Informative: the command already is the container runtime's."""
    execution_id: str = ""
    """Unique in the run directory, journalled before :meth:`Connector.run` is called: a
    connector that names its job after it (a Slurm job name, an environment tag) lets a
    crashed run's clean-up find the job even if it never learnt the job's own id."""


@dataclasses.dataclass
class JobOutcome:
    """What a connector reports when a step execution has ended."""

    exit_code: int
    """The command's exit status; negative for a signal (as ``subprocess``)."""
    message: str | None = None
    """Why it failed, in the resource manager's words (Slurm reason, timeout, ...)."""
    started: float | None = None
    """Unix time the command started, from the resource manager's clock if it has one."""
    ended: float | None = None
    nodes: int | None = None
    """Classical nodes actually held (overrides the location's ``nodes``)."""
    node_seconds: float | None = None
    """Node-seconds as the resource manager accounts them (overrides nodes × duration)."""
    external_id: str | None = None


@dataclasses.dataclass(frozen=True)
class AllocationRecord:
    """An allocation a connector held across step executions (held/malleable/auto)."""

    location: str
    external_id: str
    kind: str
    """``held``, ``anchor`` or ``extension``."""
    nodes: int
    started: float
    ended: float
    node_seconds: float


JobStartedCallback = Callable[[str | None], None]
"""Called by a connector when the command starts running, with its external id if any."""


@dataclasses.dataclass(frozen=True)
class ConnectorContext:
    """What a run gives the connectors of its locations, at construction.

    The defaults stand for no run at all (a connector used on its own, in a test): nothing
    journalled, steps allocated one by one, allocations reported nowhere.
    """

    journal: Journal = NO_JOURNAL
    """The run's journal. Every step execution is journalled by the engine (kind
    ``execution``, id ``JobSpec.execution_id``); a connector records what it holds beyond one
    execution (an allocation kept across steps) with ``journal.intend`` before creating it and
    ``journal.ended`` once gone."""
    allocation_policy: str = "per-step"
    """The run's allocation strategy (``policy.allocation``): per-step, held, malleable, auto."""
    report_allocation: Callable[[AllocationRecord], None] | None = None
    """Where a connector that keeps allocations across steps reports each one once released."""


STANDALONE = ConnectorContext()
"""The context of a connector outside a run."""

ConfigT = TypeVar("ConfigT", bound=LocationConfig, covariant=True)
"""A connector's own ``Config`` (covariant: a ``Connector[SlurmConfig]`` is a
``Connector[LocationConfig]`` for code that only reads its keys)."""


class Connector(abc.ABC, Generic[ConfigT]):
    """Base class of execution connectors: one instance per location in deployment.yml.

    ``class MyConnector(Connector[MyConfig])`` with ``Config = MyConfig`` makes ``self.config``
    a ``MyConfig``. A subclass that defines ``__init__`` takes and passes on ``context``.
    """

    Config: ClassVar[type[ConfigT]] = LocationConfig  # type: ignore[assignment]
    """The location keys this connector accepts (a pydantic model, extra keys forbidden);
    connectors with no key of their own keep :class:`LocationConfig`."""
    quantum: ClassVar[bool] = False
    """True for connectors whose locations are QPUs (reported as ``quantum`` per step)."""
    outlives_host: ClassVar[bool] = True
    """Whether its jobs can outlive this host's processes (a batch job can, a local process
    cannot): their journal records are then fsync'd, not only written."""

    def __init__(
        self, location: str, config: ConfigT, context: ConnectorContext = STANDALONE
    ) -> None:
        self.location = location
        self.config = config
        self.context = context
        """The run's journal, allocation policy and allocation reporter."""

    @property
    def journal(self) -> Journal:
        """The run's journal (``context.journal``)."""
        return self.context.journal

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare the location (open sessions, check reachability); called once per run."""

    async def quantum_phase(self, started: bool) -> None:  # noqa: B027 - optional hook
        """A quantum phase of the run starts (no classical step running) or ends: a connector
        keeping allocations may shrink them (malleable, auto)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release whatever :meth:`start` acquired; called once at the end of a run."""

    async def cancel_orphan(self, resource: Resource) -> None:  # noqa: B027 - optional hook
        """End a resource a crashed qflow run recorded in its journal and never saw end.

        ``resource`` is an ``execution`` of this location (``resource.id`` was the job's
        ``JobSpec.execution_id``; ``external_id`` is what ``on_started`` reported, None if the
        crash came first) or a resource this connector journalled itself. Called by
        ``qflow run --resume`` and ``qflow clean`` before anything else; return once it is
        gone (a resource already gone is fine), raise if it could not be ended.
        """

    @abc.abstractmethod
    async def run(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        """Run one step execution to its end.

        Must call ``on_started`` once when the command really starts (after any queueing).
        On ``asyncio.CancelledError`` it must stop the job and free its resources, then
        re-raise.
        """
