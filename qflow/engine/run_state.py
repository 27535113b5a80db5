"""What a run keeps in ``RUNDIR/.qflow`` so that ``qflow run --resume RUNDIR`` can continue it.

* ``steps/``: the output directories of step executions, and ``reuse.json`` which finished
  execution (keyed by its command line and inputs, see :mod:`qflow.engine.reuse`) left its
  outputs where, so a resumed run reuses them instead of recomputing (loop iterations
  included: each iteration's inputs differ).
* ``run.json``: how the run was invoked (workflow, deployment, job order, inputs).
* ``inflight.json``: external ids of executions that started and have not ended, rewritten
  on every start/end. After a crash (``kill -9``) it names what the run left behind in
  Slurm, HyperQueue, on this host or on a QPU; the resumed run cancels those first.
* ``records.json``: every ended step execution, rewritten as each one ends, so a crash loses
  no record; the resumed run reads it to describe the executions it reuses.
"""

from __future__ import annotations

import dataclasses
import json
import os
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


class RunState:
    """The state files of one run directory."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.dir = rundir / STATE_DIR
        self.steps_prefix = f"{self.dir / 'steps'}/"
        self.tmp_prefix = f"{self.dir / 'tmp'}/"
        self._reuse_file = self.dir / "reuse.json"
        self._inflight_file = self.dir / "inflight.json"
        self._invocation_file = self.dir / "run.json"
        self._records_file = self.dir / "records.json"
        self._running: dict[int, dict[str, Any]] = {}
        self._ended: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return self._invocation_file.is_file()

    def start_fresh(self, invocation: Invocation) -> None:
        """A new run in this directory: forget any earlier run's outputs and records."""
        shutil.rmtree(self.dir / "steps", ignore_errors=True)
        self._reuse_file.unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(self._invocation_file, dataclasses.asdict(invocation))
        _write_json(self._records_file, [])
        self._write_inflight()

    def invocation(self) -> Invocation:
        return Invocation(**json.loads(self._invocation_file.read_text()))

    def reuse_store(self) -> ReuseStore:
        return ReuseStore.load(self._reuse_file)

    def leftovers(self) -> list[dict[str, Any]]:
        """Executions the previous run started and never saw end."""
        try:
            return list(json.loads(self._inflight_file.read_text()))
        except (OSError, ValueError):
            return []

    def previous_records(self) -> list[dict[str, Any]]:
        """The ended executions of the run being resumed."""
        try:
            return list(json.loads(self._records_file.read_text()))
        except (OSError, ValueError):
            return []

    # -- ledger listener ----------------------------------------------------------------------
    def on_event(self, event: str, record: StepRecord) -> None:
        """Keep inflight.json current: written before the external job can outlive us."""
        if event == "started" and record.external_id:
            entry = {
                "step": record.step,
                "iteration": record.iteration,
                "location": record.location,
                "connector": record.connector,
                "external_id": record.external_id,
            }
            with self._lock:
                self._running[id(record)] = entry
                self._write_inflight()
        elif event == "ended":
            with self._lock:
                self._ended.append(record.as_report())
                _write_json(self._records_file, self._ended)
                if self._running.pop(id(record), None) is not None:
                    self._write_inflight()

    def _write_inflight(self) -> None:
        _write_json(self._inflight_file, list(self._running.values()))


def _write_json(path: Path, data: Any) -> None:
    """Atomically: a crash mid-write leaves the previous version, never half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
