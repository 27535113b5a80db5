"""The run directory: what ``RUNDIR/.qflow`` keeps so a run can be resumed or cleaned.

* ``lock``: held by the qflow process working in the directory (:mod:`qflow.rundir.lock`).
* ``run.json``: how the run was invoked (workflow, deployment, job order, inputs, report).
  Written only once all input was validated, so bad input never replaces it.
* ``journal.jsonl``: every external resource, recorded before it exists
  (:mod:`qflow.rundir.journal`); tells a crashed run (a session that never wrote its end)
  apart from one that ended, and what it left alive.
* ``records.jsonl``: every ended step execution, appended as each one ends, so a crash loses
  no record; a resumed run reads it to describe the executions it reuses.
* ``reuse.jsonl`` and ``steps/``: which finished execution (keyed by what defines it, see
  :mod:`qflow.engine.reuse`) left its outputs where, and those outputs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path
from typing import Any, Literal

from qflow.rundir.journal import JOURNAL_NAME, Journal, JournalState, read_journal
from qflow.rundir.lock import LOCK_NAME, RunLock, holder

STATE_DIR = ".qflow"

Condition = Literal["empty", "busy", "crashed", "ended"]


class RunStateError(Exception):
    """The run directory cannot be used as asked; the message says why and the fix."""


@dataclasses.dataclass(frozen=True)
class Invocation:
    workflow: str
    deployment: str | None
    job: str | None
    inputs: list[str]
    report: str


class JsonLines:
    """An append-only JSON-lines file: one cheap append per event, readable after a crash
    (a line cut short by the crash is skipped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None
        self._lock = threading.Lock()

    def append(self, entry: Any) -> None:
        with self._lock:
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()  # in the OS once written: survives the process being killed

    def read(self) -> list[Any]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def truncate(self) -> None:
        with self._lock:
            self.close()
            self.path.write_text("", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RunState:
    """The state files of one run directory."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.dir = rundir / STATE_DIR
        self.steps_prefix = f"{self.dir / 'steps'}/"
        self.tmp_prefix = f"{self.dir / 'tmp'}/"
        self.invocation_file = self.dir / "run.json"
        self.records = JsonLines(self.dir / "records.jsonl")
        self.reuse_log = JsonLines(self.dir / "reuse.jsonl")
        self.journal = Journal(self.dir / JOURNAL_NAME)
        self._lock = RunLock(self.dir / LOCK_NAME)
        self._begun = False

    # -- looking (reads only) ----------------------------------------------------------------
    def holder(self) -> str | None:
        """The qflow process working in this directory now, if any."""
        return holder(self.dir / LOCK_NAME)

    def previous(self) -> JournalState:
        return read_journal(self.journal.path)

    def condition(self) -> Condition:
        """empty (no run), busy (a qflow process works here), crashed (its last process
        never ended the run, or something it held is still recorded alive), ended."""
        if self.holder() is not None:
            return "busy"
        if not self.invocation_file.exists():
            return "empty"
        previous = self.previous()
        if previous.sessions and (previous.last_ended is None or previous.alive):
            return "crashed"
        return "ended"

    def invocation(self) -> Invocation:
        """How the run was started; a clear error for a missing or damaged ``run.json``."""
        where = self.invocation_file
        try:
            data = json.loads(where.read_text(encoding="utf-8"))
            return Invocation(**data)
        except FileNotFoundError:
            raise RunStateError(
                f"{self.rundir} holds no qflow run (no {where}). "
                "Fix: give the --outdir of an earlier qflow run"
            ) from None
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
            raise RunStateError(
                f"{where}: not a qflow run record ({type(exc).__name__}: {exc}). Fix: give the "
                "--outdir of a qflow run, or start a new run in another directory"
            ) from None

    def new_directories(self) -> list[Path]:
        """The directories a run would create here that do not exist yet (deepest last):
        cwltool makes its prefixes' directories while it loads, before qflow validated the
        input, so a run refused for bad input removes them again."""
        wanted = [self.rundir, self.dir, self.dir / "steps", self.dir / "tmp"]
        return [path for path in wanted if not path.exists()]

    def previous_records(self) -> list[dict[str, Any]]:
        """The ended executions of the run(s) being resumed."""
        return self.records.read()

    # -- working (holds the lock) ----------------------------------------------------------
    def begin(self, invocation: Invocation | None) -> None:
        """Take the directory for this process; ``invocation`` starts a new run in it
        (forgetting an earlier, ended run's outputs and records), None resumes.

        Raises :class:`~qflow.rundir.lock.RunDirectoryBusy` if another process holds it.
        """
        self._lock.acquire()
        self._begun = True
        if invocation is not None:
            for entry in (self.dir / "steps").glob("*"):  # (cwltool made the directory itself)
                shutil.rmtree(entry, ignore_errors=True)
            tmp = self.invocation_file.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(dataclasses.asdict(invocation)), encoding="utf-8")
            tmp.replace(self.invocation_file)
            for log in (self.records, self.reuse_log):
                log.truncate()
            self.journal.path.write_text("", encoding="utf-8")
        self.journal.begin_session(resume=invocation is None)

    def finish(self, status: str) -> None:
        """End this process's work and let the lock go. Whatever it could not release stays
        alive in the journal: the directory then reads as crashed, for ``qflow clean``."""
        if not self._begun:
            return
        self._begun = False
        self.journal.end_session(status)
        self.journal.close()
        self.records.close()
        self.reuse_log.close()
        self._lock.release()
