"""The write-ahead journal of a run: every external resource, recorded before it can exist.

A run holds things outside its own process: process groups on this host, Slurm jobs and
allocations, HyperQueue jobs, QPU leases and the tasks a QPU runs. Each is written to
``RUNDIR/.qflow/journal.jsonl`` *before* the call that creates it, under an id unique in the
run directory (``<session>-<n>``: a session is one qflow process, so ids never repeat across
resumes), with a *handle*: what finds it even if the crash came before its own id was known
(a job name, an environment tag, a control directory, an idempotency key). Its external id
is added once known, and it is marked ended once it is gone. After a crash (``kill -9``),
what was intended and never ended is exactly what may still be alive: ``qflow run --resume``
and ``qflow clean`` cancel those, by handle or id.

Lines are appended and flushed (they survive the process being killed); records of
resources that outlive this host's processes (a Slurm job, a QPU task) are also fsync'd,
so they survive the host itself going down.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

JOURNAL_NAME = "journal.jsonl"


@dataclasses.dataclass(frozen=True)
class Resource:
    """An external resource a run holds (or may hold: it is recorded before it exists)."""

    id: str
    """Unique in the run directory; connectors may derive names from it."""
    kind: str
    """``execution`` (a step execution on a connector), ``slurm-allocation``, ``qpu-task``,
    ``qpu-lease``, or a connector's own kind."""
    location: str
    """The deployment location whose connector can cancel it."""
    handle: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What finds the resource without its external id (names, tags, keys, paths)."""
    external_id: str | None = None
    """Its id in the resource manager (pid, Slurm job id, QPU task id), once known."""
    step: str | None = None
    iteration: int | None = None

    def describe(self) -> str:
        """How messages name it: ``/loop/kmeans #1 (execution on compute, id 42)``."""
        where = f"{self.kind} on {self.location}"
        if self.external_id:
            where += f", id {self.external_id}"
        if not self.step:
            return where
        iteration = "" if self.iteration is None else f" #{self.iteration}"
        return f"{self.step}{iteration} ({where})"


class Journal:
    """Append-only, crash-safe record of the resources of one run directory.

    Thread-safe: connectors record from the event loop, the engine from the cwltool thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.session = secrets.token_hex(3)
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._file: Any = None
        self._open: dict[str, Resource] = {}
        self._track = True

    # -- writing ----------------------------------------------------------------------------
    def _write(self, entry: dict[str, Any], durable: bool) -> None:
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()  # in the OS once written: survives this process being killed
            if durable:
                os.fsync(self._file.fileno())  # on disk: survives this host going down

    def begin_session(self, *, resume: bool) -> None:
        """Mark the start of a qflow process working in this directory."""
        self._write(
            {"op": "session", "session": self.session, "pid": os.getpid(),
             "host": socket.gethostname(), "resume": resume, "at": time.time()},
            durable=True,
        )  # fmt: skip

    def end_session(self, status: str) -> None:
        """The run ended and released everything (success, failure, cancel, clean)."""
        self._write({"op": "run-ended", "session": self.session, "status": status,
                     "at": time.time()}, durable=True)  # fmt: skip

    def intend(
        self,
        kind: str,
        location: str,
        handle: dict[str, Any] | None = None,
        *,
        step: str | None = None,
        iteration: int | None = None,
        durable: bool = True,
    ) -> Resource:
        """Record a resource about to be created; returns it with its unique id.

        ``durable=False`` for resources that cannot outlive this host (a local process).
        """
        resource = Resource(
            id=f"{self.session}-{next(self._numbers)}",
            kind=kind,
            location=location,
            handle=dict(handle or {}),
            step=step,
            iteration=iteration,
        )
        entry = {"op": "intend", **dataclasses.asdict(resource), "at": time.time()}
        self._write(entry, durable)
        if self._track:
            with self._lock:
                self._open[resource.id] = resource
        return resource

    def exists(self, resource: Resource, external_id: str, *, durable: bool = True) -> Resource:
        """The resource was created and has this id in its resource manager."""
        self._write({"op": "exists", "id": resource.id, "external_id": external_id}, durable)
        updated = dataclasses.replace(resource, external_id=external_id)
        with self._lock:
            if resource.id in self._open:
                self._open[resource.id] = updated
        return updated

    def ended(self, resource: Resource) -> None:
        """The resource is gone (not merely forgotten: a cancel that may have failed is not
        an end). Not fsync'd: a lost end only means a later clean-up finds nothing."""
        self._write({"op": "ended", "id": resource.id}, durable=False)
        with self._lock:
            self._open.pop(resource.id, None)

    def held(self) -> list[Resource]:
        """What this session recorded and has not seen end."""
        with self._lock:
            return list(self._open.values())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    # -- reading (after a crash) -------------------------------------------------------------
    def replay(self) -> JournalState:
        """What earlier sessions left: resources still alive, and how the last one ended."""
        return read_journal(self.path)


@dataclasses.dataclass
class JournalState:
    alive: list[Resource]
    """Recorded and never marked ended, oldest first."""
    sessions: int
    last_ended: str | None
    """Status of the last session's ``run-ended`` line; None if it never wrote one."""
    last_pid: int | None


def read_journal(path: Path) -> JournalState:
    """Replay a journal; a line cut short by a crash (the last one) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return JournalState([], 0, None, None)
    alive: dict[str, Resource] = {}
    sessions, last_ended, last_pid = 0, None, None
    fields = {f.name for f in dataclasses.fields(Resource)}
    for line in lines:
        try:
            entry = json.loads(line)
            op = entry["op"]
        except (ValueError, KeyError, TypeError):
            continue
        if op == "session":
            sessions += 1
            last_ended, last_pid = None, entry.get("pid")
        elif op == "run-ended":
            last_ended = str(entry.get("status"))
        elif op == "intend":
            resource = Resource(**{k: v for k, v in entry.items() if k in fields})
            alive[resource.id] = resource
        elif op == "exists" and entry.get("id") in alive:
            alive[entry["id"]] = dataclasses.replace(
                alive[entry["id"]], external_id=entry.get("external_id")
            )
        elif op == "ended":
            alive.pop(entry.get("id"), None)
    return JournalState(list(alive.values()), sessions, last_ended, last_pid)


class NoJournal(Journal):
    """Journal of runs without a run directory (``qflow-cwl-runner``, tests): ids, no file."""

    def __init__(self) -> None:
        super().__init__(Path(os.devnull))
        self._track = False

    def _write(self, entry: dict[str, Any], durable: bool) -> None:
        return None


NO_JOURNAL = NoJournal()
"""Default journal of a connector no run gave one (standalone use, unit tests)."""
