"""The papers' Fig. 2 from run reports: classical nodes held and QPU use over time.

Several reports (workflows run side by side, e.g. the strategy benchmark's "double" mode)
share one time axis and are stacked, one colour per workflow, so the top curve is what the
cluster gave all of them together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Interval = tuple[float, float, float]
"""(start, end, value): ``value`` nodes or QPU tasks held from ``start`` to ``end``."""


@dataclasses.dataclass(frozen=True)
class Timeline:
    """Piecewise-constant levels per workflow, on breakpoints shared by all of them."""

    times: list[float]
    """Seconds since the earliest run started; level i holds from times[i] to times[i+1]."""
    nodes: list[list[float]]
    """Per workflow: classical nodes held."""
    qpu: list[list[float]]
    """Per workflow: QPU tasks running."""
    labels: list[str]


def node_intervals(report: dict[str, Any], t0: float) -> list[Interval]:
    """Per-step allocations (steps with node-seconds of their own) and kept allocations."""
    steps = _timed_steps(report)
    intervals = [(s["started"] - t0, s["ended"] - t0, float(s.get("nodes") or 0))
                 for s in steps if s.get("node_seconds", 0) > 0]  # fmt: skip
    intervals += [(a["started"] - t0, a["ended"] - t0, float(a["nodes"]))
                  for a in report.get("allocations", [])]  # fmt: skip
    return intervals


def qpu_intervals(report: dict[str, Any], t0: float) -> list[Interval]:
    return [(s["started"] - t0, s["ended"] - t0, 1.0) for s in _timed_steps(report)
            if s.get("quantum")]  # fmt: skip


def timeline(reports: Sequence[dict[str, Any]]) -> Timeline:
    """The levels of every report on the union of their breakpoints."""
    t0 = min(r["started"] for r in reports)
    nodes = [node_intervals(r, t0) for r in reports]
    qpu = [qpu_intervals(r, t0) for r in reports]
    times = sorted({0.0} | {t for group in nodes + qpu for s, e, _ in group for t in (s, e)})
    labels = [f"{i + 1}: {Path(r['workflow']).name}" for i, r in enumerate(reports)]
    return Timeline(
        times=times,
        nodes=[_levels(group, times) for group in nodes],
        qpu=[_levels(group, times) for group in qpu],
        labels=labels,
    )


def plot_timeline(
    reports: Sequence[dict[str, Any]], path: str | Path, title: str | None = None
) -> None:
    """Draw classical nodes held and QPU tasks running against time, stacked per workflow."""
    data = timeline(reports)
    fig, (ax_nodes, ax_qpu) = plt.subplots(2, 1, sharex=True, figsize=(9, 5))
    ax_nodes.stackplot(data.times, *data.nodes, labels=data.labels, step="post")
    ax_nodes.set_ylabel("classical nodes held")
    first = reports[0]
    ax_nodes.set_title(
        title or f"{Path(first['workflow']).name} on {Path(first['deployment']).name}"
    )
    ax_qpu.stackplot(data.times, *data.qpu, step="post")
    ax_qpu.set_ylabel("QPU tasks running")
    ax_qpu.set_xlabel("seconds since the first run started")
    if len(reports) > 1:
        ax_nodes.legend(loc="upper right", fontsize="small", title="workflow")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _timed_steps(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in report["steps"] if s.get("started") is not None and s.get("ended")]


def _levels(intervals: list[Interval], times: list[float]) -> list[float]:
    return [sum(v for s, e, v in intervals if s <= t < e) for t in times]
