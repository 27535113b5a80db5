"""What a run keeps in ``RUNDIR/.qflow`` so that ``qflow run --resume RUNDIR`` can continue it.

* ``steps/``: the output directories of step executions, and ``reuse.jsonl`` which finished
  execution (keyed by its command line and inputs, see :mod:`qflow.engine.reuse`) left its
  outputs where, so a resumed run reuses them instead of recomputing (loop iterations
  included: each iteration's inputs differ).
* ``run.json``: how the run was invoked (workflow, deployment, job order, inputs).
* ``inflight.jsonl``: a line per start and per end of an execution with an external id.
  After a crash (``kill -9``) it names what the run left behind in
  Slurm, HyperQueue, on this host or on a QPU; the resumed run cancels those first.
* ``records.jsonl``: every ended step execution, appended as each one ends, so a crash loses
  no record; the resumed run reads it to describe the executions it reuses.

All three are append-only JSON lines: one small write per event, whatever the run's length.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path
from typing import Any

from qflow.engine.reuse import ReuseStore
from qflow.ledger import StepRecord

STATE_DIR = ".qflow"


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
            if self._file is not None:
                self._file.close()
                self._file = None
            self.path.write_text("", encoding="utf-8")


class RunState:
    """The state files of one run directory."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.dir = rundir / STATE_DIR
        self.steps_prefix = f"{self.dir / 'steps'}/"
        self.tmp_prefix = f"{self.dir / 'tmp'}/"
        self._invocation_file = self.dir / "run.json"
        self._records = JsonLines(self.dir / "records.jsonl")
        self._inflight = JsonLines(self.dir / "inflight.jsonl")
        self._reuse = JsonLines(self.dir / "reuse.jsonl")
        self._numbers: dict[int, int] = {}

    def exists(self) -> bool:
        return self._invocation_file.is_file()

    def start_fresh(self, invocation: Invocation) -> None:
        """A new run in this directory: forget any earlier run's outputs and records."""
        shutil.rmtree(self.dir / "steps", ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._invocation_file.write_text(json.dumps(dataclasses.asdict(invocation)))
        for log in (self._records, self._inflight, self._reuse):
            log.truncate()

    def invocation(self) -> Invocation:
        return Invocation(**json.loads(self._invocation_file.read_text()))

    def reuse_store(self) -> ReuseStore:
        return ReuseStore(self._reuse)

    def leftovers(self) -> list[dict[str, Any]]:
        """Executions the previous run started and never saw end (then forgets them)."""
        running: dict[int, dict[str, Any]] = {}
        for event in self._inflight.read():
            if "ended" in event:
                running.pop(event["ended"], None)
            else:
                running[event["started"]] = event
        self._inflight.truncate()
        return list(running.values())

    def previous_records(self) -> list[dict[str, Any]]:
        """The ended executions of the run(s) being resumed."""
        return self._records.read()

    # -- ledger listener ----------------------------------------------------------------------
    def on_event(self, event: str, record: StepRecord) -> None:
        """Keep the logs current: a start is written before the external job can outlive us."""
        if event == "started" and record.external_id:
            number = self._numbers[id(record)] = len(self._numbers) + 1
            self._inflight.append(
                {
                    "started": number,
                    "step": record.step,
                    "iteration": record.iteration,
                    "location": record.location,
                    "connector": record.connector,
                    "external_id": record.external_id,
                }
            )
        elif event == "ended":
            self._records.append(record.as_report())
            number = self._numbers.pop(id(record), None)
            if number is not None:
                self._inflight.append({"ended": number})
