"""The quantum-connector contract: how quantum tasks reach a QPU.

Its task methods mirror QRMI's ``QuantumResource`` (task_start/status/result/stop/logs, and
status with capacity and pending jobs), as async methods. QRMI's acquire/release have no
counterpart: qflow acquires a QPU by a gateway lease, held only while a step uses it. A QPU
vendor writes one subclass and registers it in the ``qflow.connectors`` entry-point group,
next to execution connectors.

A quantum location in deployment.yml names such a connector. Steps never talk to it: the
QPU gateway (:mod:`qflow.gateway`) holds the connector, the vendor credentials and the
virtual-QPU slots, and a step's client command gets only a per-step gateway token.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Literal, TypeAlias, TypeVar

from pydantic import Field

from qflow.connector import LocationConfig
from qflow.rundir.journal import Resource

TaskState = Literal["queued", "running", "completed", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

TaskBody: TypeAlias = Mapping[str, Any]
"""A task as a step sent it, a JSON object whose ``kind`` (default ``qubo``) gives its shape:
:class:`~qflow.qpu_client.QuboTask` for ``qubo``, the connector's documented shape for its
other :attr:`~QuantumConnector.task_kinds`. The gateway has checked the kind against
``task_kinds``, and a ``qubo`` task's fields, before a connector sees it."""
TaskResult: TypeAlias = Mapping[str, Any]
"""A completed task's result, a JSON object: :class:`~qflow.qpu_client.QuboResult` for
``qubo``."""


class QuantumLocationConfig(LocationConfig):
    """Keys every quantum location accepts, whatever its connector."""

    vqpus: int = Field(
        default=1,
        ge=1,
        description="Virtual QPUs: how many steps may hold this QPU at the same time "
        "(their tasks still run one at a time on the physical QPU).",
    )
    max_wait: float = Field(
        default=60.0,
        ge=0,
        description="Longest wait in seconds for a virtual-QPU slot before a quantum "
        "candidate falls back to its classical implementation.",
    )
    run_on: str | None = Field(
        default=None,
        description="Classical location where the step's client command runs; omitted: "
        "this host, so no classical node is held while the QPU works.",
    )
    gateway: str | None = Field(
        default=None,
        description="URL of a shared site-wide QPU gateway (qflow gateway); omitted: "
        "a gateway embedded in this qflow run.",
    )
    gateway_token: str | None = Field(
        default=None,
        description="Admin token of the shared gateway, as a reference: ${env:NAME} or "
        "${file:PATH}.",
    )
    gateway_location: str | None = Field(
        default=None,
        description="This QPU's location name at the shared gateway; omitted: the same name.",
    )


@dataclasses.dataclass(frozen=True)
class QpuStatus:
    """What a QPU says about itself (QRMI users asked for more than 'accessible')."""

    online: bool
    capacity: int = 1
    """Tasks the physical QPU executes at the same time."""
    running: int = 0
    pending: int = 0
    detail: str = ""
    task_seconds: float | None = None
    """How long one task occupies the QPU, as the QPU itself estimates it (None: it does not
    say). Placement by earliest finish uses it until qflow has measured the QPU."""


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """A quantum task's state as the QPU reports it."""

    id: str
    state: TaskState
    message: str | None = None
    qpu_seconds: float | None = None
    """QPU time the vendor accounts for the task (None: not reported)."""
    started: float | None = None
    ended: float | None = None


QuantumConfigT = TypeVar("QuantumConfigT", bound=QuantumLocationConfig, covariant=True)
"""A quantum connector's own ``Config`` (covariant, as :data:`qflow.connector.ConfigT`)."""


class QuantumConnector(abc.ABC, Generic[QuantumConfigT]):
    """Base class of quantum connectors: one instance per quantum location.

    ``class MyQpu(QuantumConnector[MyQpuConfig])`` with ``Config = MyQpuConfig`` makes
    ``self.config`` a ``MyQpuConfig``.
    """

    Config: ClassVar[type[QuantumConfigT]] = QuantumLocationConfig  # type: ignore[assignment]
    """The location keys this connector accepts; connectors with no key of their own keep
    :class:`QuantumLocationConfig`."""
    quantum: ClassVar[bool] = True
    task_kinds: ClassVar[tuple[str, ...]] = ("qubo",)
    """Task kinds this QPU accepts (``qubo``: a QUBO as [i, j, value] terms)."""

    def __init__(self, location: str, config: QuantumConfigT) -> None:
        self.location = location
        self.config = config

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open sessions/clients; called once before first use."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Close what :meth:`start` opened."""

    @abc.abstractmethod
    async def status(self) -> QpuStatus:
        """Reachability, capacity and queue; raises if the QPU cannot be reached."""

    @abc.abstractmethod
    async def task_start(self, task: TaskBody, idempotency_key: str) -> str:
        """Submit a task; returns the QPU's task id. Raise
        :class:`~qflow.connectors.task_errors.TaskRefused` for a task this QPU cannot take
        (too large, wrong shape): the step is told why and does not retry.

        ``idempotency_key`` is unique per logical task: a retried submission with the same
        key must not create a second task (check or pass it on to the vendor).
        """

    @abc.abstractmethod
    async def task_status(self, task_id: str) -> TaskInfo:
        """The task's state now; once final, with the QPU-seconds the vendor accounts (the
        gateway reports them per step). Raises if the task is unknown."""

    @abc.abstractmethod
    async def task_result(self, task_id: str) -> TaskResult:
        """The result of a ``completed`` task; raises while it is not (or never will be)."""

    @abc.abstractmethod
    async def task_stop(self, task_id: str) -> None:
        """Stop the task if it has not ended (an ended one is left as it is); called when a
        step is cancelled, its lease released, or a crashed run cleaned up."""

    async def task_logs(self, task_id: str) -> str:
        """The QPU's log text of the task (none by default)."""
        return ""

    async def task_lookup(self, idempotency_key: str) -> str | None:
        """The id of the task submitted with ``idempotency_key``, if the QPU knows one.

        Lets a crashed run's clean-up stop a task whose submission it never saw answered.
        Vendors that cannot look tasks up by key keep the default (None).
        """
        return None

    async def cancel_orphan(self, resource: Resource) -> None:
        """Stop a task a crashed qflow run journalled (kind ``qpu-task``) and never saw end:
        by its id, else by the idempotency key it was submitted with."""
        task_id = resource.external_id or await self.task_lookup(
            str(resource.handle.get("idempotency_key", ""))
        )
        if task_id is not None:
            await self.task_stop(task_id)
