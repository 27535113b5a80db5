"""The tasks of a vendor connector kept in memory and run one at a time, as a QPU does.

The ``ibm`` and ``pasqal`` connectors run their tasks in this process (a local simulation or
a blocking vendor client): the book gives them idempotency keys, states, logs, results and
cancellation, and :class:`BookedTasks` the matching ``task_*`` methods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from qflow.connectors.sdk_threads import in_worker
from qflow.connectors.task_errors import ResultNotReady, TaskCancelled, TaskNotFound, TaskRefused
from qflow.quantum import TaskBody, TaskInfo, TaskResult, TaskState
from qflow.secrets import redact


def fingerprint(task: TaskBody) -> str:
    """What makes two submissions the same task (compared under one idempotency key)."""
    return hashlib.sha256(json.dumps(task, sort_keys=True, default=str).encode()).hexdigest()


def reused_key(key: str, task_id: str) -> TaskRefused:
    """The refusal of a different task under an idempotency key that ``task_id`` has."""
    return TaskRefused(
        f"idempotency key {key!r} was already used for a different task "
        f"({task_id}). Fix: use a new key for a new task"
    )


@dataclasses.dataclass(eq=False)
class BookTask:
    """One task of a :class:`TaskBook`; ``work`` runs in a worker thread."""

    id: str
    key: str
    kind: str
    fingerprint: str
    created: float
    state: TaskState = "queued"
    message: str | None = None
    started: float | None = None
    ended: float | None = None
    qpu_seconds: float | None = None
    result: dict[str, Any] | None = None
    log: list[str] = dataclasses.field(default_factory=list)
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    on_cancel: Callable[[], None] | None = None
    """Set by the work function while something remote runs (e.g. a cloud job's cancel)."""
    runner: asyncio.Task[None] | None = None

    def note(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self.log.append(f"{stamp} {text}")

    def checkpoint(self) -> None:
        """Give up early if the task was stopped meanwhile."""
        if self.cancel_event.is_set():
            raise TaskCancelled

    def info(self) -> TaskInfo:
        return TaskInfo(
            id=self.id,
            state=self.state,
            message=self.message,
            qpu_seconds=self.qpu_seconds,
            started=self.started,
            ended=self.ended,
        )


Work = Callable[[BookTask], TaskResult]


class TaskBook:
    """The tasks of one connector, in memory, executed one at a time (a QPU runs one task).

    ``submit`` with an idempotency key seen before returns the same task (a different task
    under the same key is refused). Work functions run in a worker thread
    (:data:`~qflow.connectors.sdk_threads.WORKERS`) and may call ``task.checkpoint()`` to
    stop early once cancelled.
    """

    def __init__(self, prefix: str, scrub: Callable[[str], str] = redact) -> None:
        self.prefix = prefix
        self.scrub = scrub
        self.tasks: dict[str, BookTask] = {}
        self._by_key: dict[str, BookTask] = {}
        self._lock: asyncio.Lock | None = None

    def find(self, task: TaskBody, key: str) -> BookTask | None:
        """The task submitted before under ``key`` (None: a new key); a different task under
        a known key is refused."""
        existing = self._by_key.get(key)
        if existing is not None and existing.fingerprint != fingerprint(task):
            raise reused_key(key, existing.id)
        return existing

    def submit(self, task: TaskBody, key: str, kind: str, work: Work) -> BookTask:
        existing = self.find(task, key)
        if existing is not None:
            return existing
        digest = fingerprint(task)
        if self._lock is None:
            self._lock = asyncio.Lock()
        item = BookTask(
            id=f"{self.prefix}-{uuid.uuid4().hex[:12]}",
            key=key,
            kind=kind,
            fingerprint=digest,
            created=time.time(),
        )
        item.note(f"queued ({kind})")
        self.tasks[item.id] = item
        self._by_key[key] = item
        item.runner = asyncio.get_running_loop().create_task(self._run(item, work))
        return item

    async def _run(self, item: BookTask, work: Work) -> None:
        assert self._lock is not None
        async with self._lock:
            if item.state != "queued":
                return
            item.state = "running"
            item.started = time.time()
            item.note("running")
            try:
                result = await in_worker(work, item)
            except TaskCancelled:
                self._finish(item, "cancelled", "stopped by request")
            except asyncio.CancelledError:
                self._finish(item, "cancelled", "the connector stopped")
                raise
            except Exception as exc:  # noqa: BLE001 - the task failed; say why in its state
                self._finish(item, "failed", self.scrub(f"{type(exc).__name__}: {exc}"))
            else:
                if item.state == "running":
                    item.result = result
                    self._finish(item, "completed", None)

    def _finish(self, item: BookTask, state: TaskState, message: str | None) -> None:
        if item.state in ("queued", "running"):
            item.state = state
            item.message = message
            item.ended = time.time()
            item.note(state + (f": {message}" if message else ""))

    def get(self, task_id: str) -> BookTask:
        item = self.tasks.get(task_id)
        if item is None:
            raise TaskNotFound(f"no task {task_id!r} on this QPU")
        return item

    def result(self, task_id: str) -> dict[str, Any]:
        item = self.get(task_id)
        if item.state != "completed" or item.result is None:
            detail = f": {item.message}" if item.message else ""
            raise ResultNotReady(f"task {task_id} has no result, it is {item.state}{detail}")
        return item.result

    async def stop(self, task_id: str) -> None:
        """Cancel a queued task at once; a running one is flagged, and its remote part (if
        any) cancelled; a final task is left as it is."""
        item = self.get(task_id)
        if item.state not in ("queued", "running"):
            return
        item.cancel_event.set()
        on_cancel = item.on_cancel
        self._finish(item, "cancelled", "stopped by request")
        if on_cancel is not None:
            try:
                await in_worker(on_cancel)
            except Exception as exc:  # noqa: BLE001 - best effort: the state already says so
                item.note(self.scrub(f"remote cancel failed: {type(exc).__name__}: {exc}"))

    def counts(self) -> tuple[int, int]:
        """(running, pending) tasks."""
        states = [t.state for t in self.tasks.values()]
        return states.count("running"), states.count("queued")

    async def close(self) -> None:
        """Stop every unfinished task (remote parts included, so no worker thread stays
        blocked on a vendor job) and end the runners."""
        for item in list(self.tasks.values()):
            if item.state in ("queued", "running"):
                await self.stop(item.id)
        runners = [t.runner for t in self.tasks.values() if t.runner and not t.runner.done()]
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)


class BookedTasks:
    """The task_* methods of a quantum connector whose tasks live in a :class:`TaskBook`."""

    book: TaskBook
    _scrub: Callable[[str], str]
    """Removes credentials from text (defined by each connector)."""

    async def task_status(self, task_id: str) -> TaskInfo:
        return self.book.get(task_id).info()

    async def task_result(self, task_id: str) -> dict[str, Any]:
        return self.book.result(task_id)

    async def task_stop(self, task_id: str) -> None:
        await self.book.stop(task_id)

    async def task_logs(self, task_id: str) -> str:
        return self._scrub("\n".join(self.book.get(task_id).log))
