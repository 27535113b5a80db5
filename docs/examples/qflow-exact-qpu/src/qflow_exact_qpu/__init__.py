"""A complete qflow quantum connector in one class: an "exact QPU" for small QUBOs.

It stands for a vendor's QPU: tasks are queued and executed one at a time by a worker, and
each has a state, a result, logs and its QPU time. A real vendor connector would send the
task to the vendor's service in ``task_start`` and read its state in ``task_status``; the
shape of the class is the same. See docs/connectors.md for the walk-through.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from pydantic import Field

from qflow.quantum import QpuStatus, QuantumConnector, QuantumLocationConfig, TaskBody, TaskInfo


class ExactQpuConfig(QuantumLocationConfig):
    """deployment.yml keys of an exact-qpu location (plus vqpus, max_wait, ...)."""

    max_variables: int = Field(default=16, ge=1, le=24, description="Largest QUBO accepted.")
    shot_time: float = Field(default=0.0, ge=0, description="Seconds each task occupies the QPU.")


class ExactQpu(QuantumConnector[ExactQpuConfig]):
    """Solves QUBO tasks exactly by trying every assignment, one task at a time."""

    Config = ExactQpuConfig  # self.config is an ExactQpuConfig
    task_kinds = ("qubo",)

    def __init__(self, location: str, config: ExactQpuConfig) -> None:
        super().__init__(location, config)
        self._tasks: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, str] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    async def status(self) -> QpuStatus:
        running = sum(1 for t in self._tasks.values() if t["state"] == "running")
        return QpuStatus(online=True, capacity=1, running=running, pending=self._queue.qsize())

    async def task_start(self, task: TaskBody, idempotency_key: str) -> str:
        if idempotency_key in self._by_key:  # a retried submission: same task
            return self._by_key[idempotency_key]
        if task.get("kind") != "qubo" or int(task["num_variables"]) > self.config.max_variables:
            raise ValueError(
                f"exact-qpu takes QUBOs of at most {self.config.max_variables} variables"
            )
        task_id = f"exact-{len(self._tasks) + 1}"
        self._tasks[task_id] = {"task": task, "state": "queued", "log": [f"queued {time.time()}"]}
        self._by_key[idempotency_key] = task_id
        await self._queue.put(task_id)
        return task_id

    async def task_status(self, task_id: str) -> TaskInfo:
        t = self._tasks[task_id]
        return TaskInfo(task_id, t["state"], started=t.get("started"), ended=t.get("ended"))

    async def task_result(self, task_id: str) -> dict[str, Any]:
        return self._tasks[task_id]["result"]

    async def task_stop(self, task_id: str) -> None:
        if self._tasks[task_id]["state"] in ("queued", "running"):
            self._tasks[task_id]["state"] = "cancelled"

    async def task_logs(self, task_id: str) -> str:
        return "\n".join(self._tasks[task_id]["log"])

    async def target(self) -> dict[str, Any]:
        return {"name": "exact-qpu", "max_variables": self.config.max_variables}

    async def _work(self) -> None:
        while True:
            task_id = await self._queue.get()
            t = self._tasks[task_id]
            if t["state"] == "cancelled":
                continue
            t["state"], t["started"] = "running", time.time()
            await asyncio.sleep(self.config.shot_time)
            sample, energy = solve_exactly(t["task"])
            t["result"] = {"kind": "qubo", "best_sample": sample, "best_energy": energy,
                           "solver": "exact-qpu"}  # fmt: skip
            t["state"], t["ended"] = "completed", time.time()
            t["log"].append(f"completed energy={energy}")


def solve_exactly(task: dict[str, Any]) -> tuple[list[int], float]:
    """The lowest-energy assignment of a QUBO given as [i, j, value] terms."""
    n = int(task["num_variables"])
    terms = [(int(i), int(j), float(v)) for i, j, v in task["qubo"]]
    best: tuple[float, tuple[int, ...]] = (float("inf"), (0,) * n)
    for x in itertools.product((0, 1), repeat=n):
        energy = sum(v * x[i] * x[j] for i, j, v in terms)
        best = min(best, (energy, x))
    return list(best[1]), best[0]
