"""Leases on virtual QPUs and the tasks started through them: their records and slots."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any

from qflow.quantum import FINAL_STATES, QuantumConnector, QuantumLocationConfig, TaskInfo
from qflow.rundir.journal import Resource


class LeaseRefused(Exception):
    """No slot for the step: the reason says why (offline, unreachable, busy too long)."""

    def __init__(self, reason: str, *, busy: bool = False) -> None:
        super().__init__(reason)
        self.busy = busy
        """True when the QPU works but no virtual QPU became free in time."""


REQUEST_TIMEOUT_S = 10.0
"""Longest wait for one call to a QPU (its status, stopping a task): a QPU that hangs costs a
lease request at most this on top of its ``max_wait``, and a release at most this."""
ACCOUNTING_TIMEOUT_S = 2.0
"""Longest wait, once a lease's tasks are stopped, for their final state (QPU time)."""


@dataclasses.dataclass
class GatewayTask:
    """A task a step started through its lease."""

    qpu_id: str
    submitted: float
    resource: Resource
    """Its journal record (the task may outlive this process at the QPU's vendor)."""
    info: TaskInfo | None = None
    """The last state read from the QPU."""
    accounted: bool = False
    stopped: float | None = None

    @property
    def final(self) -> bool:
        return self.info is not None and self.info.state in FINAL_STATES


@dataclasses.dataclass(frozen=True)
class TaskSummary:
    """How one task of a lease ended, for the step's record."""

    state: str
    message: str | None
    submitted: float
    started: float | None
    ended: float | None
    qpu_seconds: float


@dataclasses.dataclass(frozen=True)
class LeaseSummary:
    """What a released lease's tasks used and how they ended."""

    qpu_seconds: float
    tasks: list[TaskSummary]
    notes: list[str]
    """What could not be known exactly (a QPU time estimated, a task that would not stop)."""

    def failure(self) -> str | None:
        """Why the lease's work failed, in the QPU's words (None: nothing went wrong)."""
        reasons = [
            f"task {task.state}: {task.message or 'no reason given'}"
            for task in self.tasks
            if task.state in ("failed", "cancelled")
        ]
        return "; ".join(reasons + self.notes) or None

    def queue_seconds(self) -> float:
        """Time the tasks waited in the QPU's queue (their own execution excluded)."""
        return sum(max(0.0, t.started - t.submitted) for t in self.tasks if t.started)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeaseSummary:
        tasks = [TaskSummary(**t) for t in data.get("tasks", [])]
        return cls(float(data["qpu_seconds"]), tasks, list(data.get("notes", [])))


@dataclasses.dataclass
class Lease:
    id: str
    location: str
    step: str
    token: str
    granted: float
    tasks: dict[str, GatewayTask] = dataclasses.field(default_factory=dict)
    """Gateway task id -> the task."""
    qpu_seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> LeaseSummary:
        tasks = [
            TaskSummary(
                state=t.info.state if t.info else "unknown",
                message=t.info.message if t.info else None,
                submitted=t.submitted,
                started=t.info.started if t.info else None,
                ended=t.info.ended if t.info else None,
                qpu_seconds=task_seconds(t.info) or 0.0,
            )
            for t in self.tasks.values()
        ]
        return LeaseSummary(self.qpu_seconds, tasks, list(self.notes))


def task_seconds(info: TaskInfo | None) -> float | None:
    """The QPU time of a final task: the vendor's figure, else its start to end."""
    if info is None:
        return None
    if info.qpu_seconds is not None:
        return info.qpu_seconds
    if info.started is not None and info.ended is not None:
        return max(0.0, info.ended - info.started)
    return None


class QpuSlots:
    """The virtual-QPU slots of one location: at most ``vqpus`` leases at a time."""

    def __init__(self, connector: QuantumConnector[QuantumLocationConfig]) -> None:
        self.connector = connector
        self.free = connector.config.vqpus
        self.waiting = 0
        self._changed = asyncio.Condition()
        self.granted = self.refused = self.most_held = 0
        """Counters for ``GET /v1/stats``: leases granted, refused, most held at once."""
        self.holds: collections.deque[float] = collections.deque(maxlen=50)
        """How long recent leases were held (for estimates of when a slot frees)."""
        self.task_seconds: collections.deque[float] = collections.deque(maxlen=50)
        """QPU time of recent tasks (the QPU's measured service time)."""

    async def take(self, max_wait: float) -> None:
        async with self._changed:
            self.waiting += 1
            try:
                if self.free <= 0:  # (wait_for with a timeout of 0 never runs the wait)
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.free > 0), max_wait)
            except TimeoutError:
                raise LeaseRefused(
                    f"no virtual QPU of {self.connector.location} became free within "
                    f"{max_wait:g} s",
                    busy=True,
                ) from None
            finally:
                self.waiting -= 1
            self.free -= 1
            self.granted += 1
            self.most_held = max(self.most_held, self.connector.config.vqpus - self.free)

    async def give_back(self, held_for: float | None = None) -> None:
        async with self._changed:
            self.free += 1
            if held_for is not None:
                self.holds.append(held_for)
            self._changed.notify()

    def stats(self) -> dict[str, int]:
        vqpus = self.connector.config.vqpus
        return {
            "vqpus": vqpus,
            "free": self.free,
            "held": vqpus - self.free,
            "most_held": self.most_held,
            "granted": self.granted,
            "refused": self.refused,
        }
