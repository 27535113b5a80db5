"""One record per step execution, and the run report built from them.

The report's shape is part of qflow's outside contract (docs/report.md). Node-seconds count
what was *held*: nodes × seconds of every allocation, as the papers count them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qflow import __version__
from qflow.connector import AllocationRecord
from qflow.secrets import redact

REPORT_NAME = "qflow-report.json"
"""Where ``qflow run`` writes the report in its ``--outdir`` unless ``--report`` says."""

if TYPE_CHECKING:
    from qflow.placement import Placement

StepStatus = Literal["queued", "running", "success", "failed", "cancelled", "reused"]
RunStatus = Literal["success", "failed", "cancelled"]


@dataclasses.dataclass
class StepRecord:
    """A step execution as the report shows it (field names are the contract's)."""

    step: str
    iteration: int | None
    location: str | None = None
    connector: str | None = None
    quantum: bool = False
    fallback: bool = False
    fallback_reason: str | None = None
    submitted: float = 0.0
    started: float | None = None
    ended: float | None = None
    nodes: int = 0
    node_seconds: float = 0.0
    qpu_seconds: float = 0.0
    external_id: str | None = None
    container_image: str | None = None
    """The software-container image the step ran in (None: none)."""
    status: StepStatus = "queued"
    message: str | None = None
    """Why it failed or was retried (not in the contract's required fields; extra)."""
    placement_reason: str | None = None
    """Why placement chose this location (the rule and what it saw; extra)."""
    estimate: dict[str, float] | None = None
    """Earliest-finish placement: expected seconds from submission to the end, for every
    candidate it weighed (the chosen one is ``location``; extra)."""

    def as_report(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Listener = Callable[[str, StepRecord], None]
"""Called with an event name (``submitted``, ``started``, ``ended``) and the record."""


class Ledger:
    """Thread-safe list of step records; listeners see every change (progress display)."""

    def __init__(self) -> None:
        self._records: list[StepRecord] = []
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._previous: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        self._allocations: list[AllocationRecord] = []

    def allocation(self, record: AllocationRecord) -> None:
        """An allocation held across step executions (held/malleable/auto strategies)."""
        with self._lock:
            self._allocations.append(record)

    def remember(self, previous: list[dict[str, Any]]) -> None:
        """Records of the run being resumed, to describe the executions it reuses."""
        for old in previous:
            if old.get("status") in ("success", "reused"):
                self._previous.setdefault((old["step"], old["iteration"]), []).append(old)

    def reused(self, step: str, iteration: int | None) -> StepRecord:
        """An execution whose outputs came from the run directory's cache (not re-run)."""
        now = time.time()
        record = StepRecord(step=step, iteration=iteration, submitted=now, started=now)
        earlier = self._previous.get((step, iteration))
        if earlier:
            old = earlier.pop(0)
            record.location, record.connector = old.get("location"), old.get("connector")
            record.quantum, record.external_id = bool(old.get("quantum")), old.get("external_id")
            record.container_image = old.get("container_image")
        with self._lock:
            self._records.append(record)
        self._emit("submitted", record)
        self.ended(record, "reused", ended=now, node_seconds=0.0, message="outputs reused")
        return record

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: str, record: StepRecord) -> None:
        for listener in self._listeners:
            try:
                listener(event, record)
            except Exception:  # noqa: BLE001 - a broken display must never break a run
                self._listeners.remove(listener)
                logging.getLogger("qflow").warning(
                    "progress display failed and was switched off", exc_info=True
                )

    def submitted(
        self,
        step: str,
        iteration: int | None,
        when: float | None = None,
        container_image: str | None = None,
    ) -> StepRecord:
        """A new execution, waiting since ``when`` (its placement request; default now),
        in the software container of ``container_image`` if any."""
        record = StepRecord(step=step, iteration=iteration, submitted=when or time.time(),
                            container_image=container_image)  # fmt: skip
        with self._lock:
            self._records.append(record)
        self._emit("submitted", record)
        return record

    def placed(
        self, record: StepRecord, placement: Placement, connector: str, quantum: bool
    ) -> None:
        """Where the execution runs, and why (see :class:`~qflow.placement.Placement`)."""
        record.location, record.connector, record.quantum = placement.location, connector, quantum
        record.fallback = placement.fallback_reason is not None
        record.fallback_reason = placement.fallback_reason
        record.placement_reason = placement.reason or None
        record.estimate = dict(placement.estimates) if placement.estimates else None

    def started(self, record: StepRecord, external_id: str | None) -> None:
        record.started = time.time()
        record.external_id = external_id
        record.status = "running"
        self._emit("started", record)

    def ended(
        self,
        record: StepRecord,
        status: StepStatus,
        *,
        started: float | None = None,
        ended: float | None = None,
        nodes: int | None = None,
        node_seconds: float | None = None,
        qpu_seconds: float | None = None,
        external_id: str | None = None,
        message: str | None = None,
    ) -> None:
        """Close a record; figures from the resource manager win over qflow's clock."""
        record.ended = ended if ended is not None else time.time()
        if started is not None:
            record.started = started
        if record.started is None:
            record.started = record.ended
        if nodes is not None:
            record.nodes = nodes
        if node_seconds is None:
            node_seconds = record.nodes * max(0.0, record.ended - record.started)
        record.node_seconds = node_seconds
        if qpu_seconds is not None:
            record.qpu_seconds = qpu_seconds
        record.external_id = external_id or record.external_id
        record.message = message
        record.status = status
        self._emit("ended", record)

    def records(self) -> list[StepRecord]:
        with self._lock:
            return list(self._records)

    def report(
        self,
        *,
        workflow: str,
        deployment: str,
        status: RunStatus,
        started: float,
        ended: float,
        outputs: Any = None,
    ) -> dict[str, Any]:
        records = self.records()
        with self._lock:
            allocations = list(self._allocations)
        steps = [r.as_report() for r in records]
        totals = {
            "node_seconds": sum(r.node_seconds for r in records)
            + sum(a.node_seconds for a in allocations),
            "qpu_seconds": sum(r.qpu_seconds for r in records),
            "steps": len(records),
            "fallbacks": sum(1 for r in records if r.fallback),
            "queue_wait_s": sum(
                max(0.0, r.started - r.submitted) for r in records if r.started is not None
            ),
        }
        report: dict[str, Any] = {
            "qflow_version": __version__,
            "workflow": workflow,
            "deployment": deployment,
            "status": status,
            "started": started,
            "ended": ended,
            "wall_s": ended - started,
            "steps": steps,
            "allocations": [dataclasses.asdict(a) for a in allocations],
            "totals": totals,
        }
        if outputs is not None:
            report["outputs"] = outputs
        return report


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write atomically, so an interrupted write never leaves a truncated report."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(redact(json.dumps(report, indent=2)) + "\n", encoding="utf-8")
    tmp.replace(target)
