"""One physical QPU: tasks wait in a FIFO queue and run ONE at a time.

Each task costs its backend's latency (times ``time_scale``), then is really solved in a
worker thread, so the server keeps answering while the "QPU" works.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from qflow.emulator.backends import BACKENDS, DEFAULT_BACKEND
from qflow.emulator.errors import ApiError, BadTask
from qflow.emulator.faults import DIE_EXIT_STATUS, Faults
from qflow.emulator.kinds import KINDS, Solver
from qflow.quantum import FINAL_STATES, TaskState

_logger = logging.getLogger("qflow.emulator")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(eq=False)
class Task:
    id: str
    kind: str
    backend: str
    solver: Solver
    fingerprint: str
    created: float
    state: TaskState = "queued"
    started: float | None = None
    ended: float | None = None
    message: str | None = None
    result: Mapping[str, Any] | None = None
    log: list[str] = dataclasses.field(default_factory=list)
    interrupted: threading.Event = dataclasses.field(default_factory=threading.Event)
    execution: asyncio.Task[None] | None = None

    def note(self, text: str) -> None:
        self.log.append(f"{_iso(time.time())} {text}")

    @property
    def qpu_seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


class QpuEmulator:
    """One physical QPU: a FIFO queue and a single worker coroutine that runs its tasks."""

    capacity = 1

    def __init__(
        self,
        backend: str = DEFAULT_BACKEND,
        time_scale: float = 1.0,
        offline: bool = False,
        faults: Faults | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        if not (math.isfinite(time_scale) and time_scale >= 0):
            raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale}")
        self.backend = backend
        self.time_scale = time_scale
        self.tasks: dict[str, Task] = {}
        self.completed = 0
        self._pending: collections.deque[Task] = collections.deque()
        self._by_key: dict[str, Task] = {}
        self._executed: list[Task] = []
        self._running: Task | None = None
        self._online = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False
        self.faults = faults or Faults()
        if not offline:
            self._online.set()

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker on the running loop."""
        self._worker = asyncio.create_task(self._work(), name="qflow-emulator-qpu")

    @staticmethod
    def _warm_up() -> None:
        """Import the solvers before the first task, so its QPU time is not an import."""
        import dimod  # noqa: F401
        from dwave.samplers import SimulatedAnnealingSampler  # noqa: F401

    async def stop(self) -> None:
        """Stop the worker; a running task ends cancelled, queued ones stay queued."""
        self._stopping = True
        if self._running is not None:
            self._running.interrupted.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.wait({self._worker})

    @property
    def online(self) -> bool:
        return self._online.is_set()

    def set_online(self, online: bool) -> None:
        """Offline: new tasks are refused and the queue is paused (a running task finishes)."""
        if online:
            self._online.set()
        else:
            self._online.clear()
        _logger.info("QPU is now %s", "online" if online else "offline")

    # -- tasks ---------------------------------------------------------------------------------
    def submit(self, body: dict[str, Any], key: str | None) -> tuple[Task, bool]:
        """Queue a task; returns it and whether it is new (False: same idempotency key)."""
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if key is not None and key in self._by_key:
            existing = self._by_key[key]
            if existing.fingerprint != fingerprint:
                raise ApiError(
                    422,
                    "idempotency_conflict",
                    "Idempotency-Key was already used for a different task body; "
                    "use a new key for a new task",
                )
            return existing, False
        if not self.online:
            raise ApiError(503, "offline", "the QPU is offline and accepts no tasks")
        kind, backend, solver = self._validate(body)
        task = Task(
            id=uuid.uuid4().hex,
            kind=kind,
            backend=backend,
            solver=solver,
            fingerprint=fingerprint,
            created=time.time(),
        )
        self.tasks[task.id] = task
        if key is not None:
            self._by_key[key] = task
        self._pending.append(task)
        task.note(f"queued: kind {kind}, backend {backend}, position {len(self._pending)}")
        _logger.info("task %s queued (%s on %s)", task.id, kind, backend)
        self._wakeup.set()
        return task, True

    def _validate(self, body: dict[str, Any]) -> tuple[str, str, Solver]:
        params = dict(body)
        kind = params.pop("kind", None)
        if kind not in KINDS:
            raise BadTask(f"unknown task kind {kind!r} (supported: {', '.join(sorted(KINDS))})")
        backend = params.pop("backend", None) or self.backend
        if backend not in BACKENDS:
            raise BadTask(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        return kind, backend, KINDS[kind](params, backend)

    def with_key(self, key: str) -> list[Task]:
        """The task submitted with idempotency key ``key`` ([] if none was)."""
        return [self._by_key[key]] if key in self._by_key else []

    def get(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise ApiError(404, "not_found", f"no task {task_id!r}")
        return task

    def position(self, task: Task) -> int | None:
        """1 for the next task to run, None when the task is not waiting."""
        if task.state != "queued":
            return None
        return self._pending.index(task) + 1

    async def cancel(self, task: Task) -> None:
        """Cancel a queued or running task; a task that has ended stays as it is."""
        if task.state == "queued":
            self._pending.remove(task)
            self._finish(task, "cancelled", "cancelled while queued")
        elif task.state == "running" and task.execution is not None:
            task.interrupted.set()
            task.execution.cancel()
            await asyncio.wait({task.execution})
            if task.state not in FINAL_STATES:  # cancelled before its coroutine ran
                self._finish(task, "cancelled", self._cancel_reason())

    def describe(self, task: Task) -> dict[str, Any]:
        return {
            "id": task.id,
            "kind": task.kind,
            "backend": task.backend,
            "state": task.state,
            "queue_position": self.position(task),
            "created": task.created,
            "started": task.started,
            "ended": task.ended,
            "qpu_seconds": task.qpu_seconds,
            "message": task.message,
        }

    # -- the worker ----------------------------------------------------------------------------
    async def _next(self) -> Task:
        while True:
            await self._online.wait()
            if self._pending:
                return self._pending.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _work(self) -> None:
        """Run tasks one at a time, in submission order."""
        await asyncio.to_thread(self._warm_up)
        while True:
            task = await self._next()
            self._begin(task)  # no await since it left the queue: never seen "in between"
            task.execution = asyncio.create_task(self._execute(task))
            try:
                await asyncio.wait({task.execution})
            except asyncio.CancelledError:
                task.interrupted.set()
                task.execution.cancel()
                await asyncio.wait({task.execution})
                raise
            finally:
                self._running = None
                if task.state not in FINAL_STATES:  # cancelled before its coroutine ran
                    self._finish(task, "cancelled", self._cancel_reason())

    def _begin(self, task: Task) -> None:
        task.state = "running"
        task.started = time.time()
        self._running = task
        self._executed.append(task)
        latency = BACKENDS[task.backend].latency_s * self.time_scale
        task.note(f"started on {task.backend} (latency {latency:.3f} s)")
        _logger.info("task %s started", task.id)
        if self.faults.mode == "die_mid_task":
            asyncio.get_running_loop().call_later(latency / 2, self._die, task)

    def arm_death(self) -> None:
        """``die_mid_task`` set while a task runs: die during that one (after answering)."""
        if self.faults.mode == "die_mid_task" and self._running is not None:
            asyncio.get_running_loop().call_later(0.1, self._die, self._running)

    def _die(self, task: Task) -> None:
        """The ``die_mid_task`` fault: the process exits at once, as in a crash."""
        if self.faults.mode != "die_mid_task" or task.state != "running":
            return
        _logger.warning("fault injection: the QPU dies while task %s runs", task.id)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(DIE_EXIT_STATUS)

    def _cancel_reason(self) -> str:
        return "emulator stopped" if self._stopping else "cancelled while running"

    async def _execute(self, task: Task) -> None:
        try:
            await asyncio.sleep(BACKENDS[task.backend].latency_s * self.time_scale)
            result = await asyncio.to_thread(task.solver, task.interrupted.is_set)
        except asyncio.CancelledError:
            self._finish(task, "cancelled", self._cancel_reason())
            raise
        except Exception as exc:  # noqa: BLE001 - a solver failure is the task's failure
            self._finish(task, "failed", f"{type(exc).__name__}: {exc}")
            return
        task.result = result
        self.completed += 1
        energy = result.get("best_energy")
        self._finish(task, "completed", None if energy is None else f"best energy {energy:g}")

    def _finish(self, task: Task, state: TaskState, message: str | None) -> None:
        task.state = state
        task.message = message
        task.ended = time.time()
        task.note(f"{state}" + (f": {message}" if message else ""))
        _logger.info("task %s %s", task.id, state)

    # -- reports -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "capacity": self.capacity,
            "running": 0 if self._running is None else 1,
            "pending": len(self._pending),
            "default_backend": self.backend,
            "time_scale": self.time_scale,
            "task_seconds": BACKENDS[self.backend].latency_s * self.time_scale,
            "kinds": sorted(KINDS),
            "backends": {
                b.name: {
                    "latency_s": b.latency_s,
                    "scaled_latency_s": b.latency_s * self.time_scale,
                    "description": b.description,
                }
                for b in BACKENDS.values()
            },
            "tasks_completed": self.completed,
        }

    def stats(self) -> dict[str, Any]:
        """Every task the QPU executed to an end, in start order, and how busy it was."""
        ran = [t for t in self._executed if t.ended is not None and t.started is not None]
        return {
            "tasks": [
                {
                    "id": t.id,
                    "state": t.state,
                    "backend": t.backend,
                    "started": t.started,
                    "ended": t.ended,
                }
                for t in ran
            ],
            "tasks_completed": self.completed,
            "busy_seconds": sum(t.qpu_seconds or 0.0 for t in ran),
            "first_start": min((t.started for t in ran), default=None),  # type: ignore[type-var]
            "last_end": max((t.ended for t in ran), default=None),  # type: ignore[type-var]
        }
