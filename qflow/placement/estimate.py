"""Expected finish time of a step execution on each of its candidate locations.

finish = expected start + expected run, in seconds from now:

* **run**: this step's measured run time on that location (:mod:`qflow.placement.history`:
  earlier iterations of this run, else earlier runs of this site), else the binding's
  ``expected_seconds`` hint, else — on a QPU — the QPU's task time plus a client overhead,
  else — on a classical location — the step's run time on another classical candidate, else
  the prior :data:`PRIOR_S`, the same for every candidate (so that knowing nothing keeps the
  binding's order).
* **start** on a classical location: when a slot frees (the executions holding its slots,
  each expected to run as long as its own estimate, and those already waiting for it, served
  in turn) plus the location's measured queue wait (a Slurm partition's).
* **start** on a QPU: the later of when a virtual QPU frees (its holders, expected to hold it
  as long as leases of that QPU have lasted) and when the QPU's own queue drains: (running +
  pending tasks) / capacity × one task's time (measured by qflow, else the QPU's own
  estimate).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable
from typing import Any

PRIOR_S = 60.0
"""Run time expected of a step never measured anywhere and given no hint."""
CLIENT_OVERHEAD_S = 1.0
"""A QPU step's client command beyond its task's QPU time (start, submit, poll, write)."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    location: str
    start_s: float
    run_s: float
    source: str
    """Where the run time came from: measured, hint, qpu, other location, prior."""
    order: int = 0
    """The candidate's place in its binding (ties go to the earlier)."""

    @property
    def finish_s(self) -> float:
        return self.start_s + self.run_s

    def describe(self) -> str:
        return (
            f"{self.location} {self.finish_s:.1f} s (start {self.start_s:.1f} + run "
            f"{self.run_s:.1f}, {self.source})"
        )


def first_free(busy_remaining: Iterable[float], free: int, ahead: int, each: float) -> float:
    """When a slot is ours: ``free`` slots free now, others freeing after
    ``busy_remaining``; the ``ahead`` executions before us take a slot each for ``each``."""
    times = [0.0] * max(0, free) + [max(0.0, r) for r in busy_remaining]
    if not times:
        return float("inf")
    heapq.heapify(times)
    for _ in range(ahead):
        heapq.heappush(times, heapq.heappop(times) + each)
    return times[0]


def qpu_start(info: dict[str, Any], task_s: float | None, hold_s: float) -> float:
    """Expected wait before a step's task would run on a QPU (see the module doc)."""
    vqpus = int(info.get("vqpus") or 1)
    free = int(info.get("free") or 0)
    mean_hold = info.get("mean_hold_s") or hold_s
    held = [float(h) for h in info.get("held_for") or []]
    remaining = [mean_hold - h for h in held][: max(0, vqpus - free)]
    lease_wait = first_free(remaining, free, int(info.get("waiting") or 0), mean_hold)
    queued = int(info.get("running") or 0) + int(info.get("pending") or 0)
    capacity = max(1, int(info.get("capacity") or 1))
    vendor_wait = queued / capacity * (task_s if task_s is not None else hold_s)
    return max(lease_wait, vendor_wait)
