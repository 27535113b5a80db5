"""The papers' Fig. 2 from a run report: classical nodes held and QPU use over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def step_curve(intervals: list[tuple[float, float, float]]) -> tuple[list[float], list[float]]:
    """Sum of ``value`` over time for (start, end, value) intervals, as a step function."""
    events: list[tuple[float, float]] = []
    for start, end, value in intervals:
        events += [(start, value), (end, -value)]
    events.sort()
    xs, ys, level = [0.0], [0.0], 0.0
    for t, delta in events:
        xs.append(t)
        ys.append(level)
        level += delta
        xs.append(t)
        ys.append(level)
    return xs, ys


def plot_timeline(report: dict[str, Any], path: str | Path, title: str | None = None) -> None:
    """Draw cumulative classical nodes held and QPU-busy steps against run time."""
    t0 = report["started"]
    steps = [s for s in report["steps"] if s.get("started") is not None and s.get("ended")]
    # nodes held: each per-step allocation, plus allocations kept across steps
    nodes = [
        (s["started"] - t0, s["ended"] - t0, s.get("nodes", 0))
        for s in steps
        if s.get("node_seconds", 0) > 0
    ]
    nodes += [
        (a["started"] - t0, a["ended"] - t0, a["nodes"]) for a in report.get("allocations", [])
    ]
    qpu = [(s["started"] - t0, s["ended"] - t0, 1.0) for s in steps if s.get("quantum")]
    fig, (ax_nodes, ax_qpu) = plt.subplots(2, 1, sharex=True, figsize=(9, 5))
    ax_nodes.plot(*step_curve(nodes), drawstyle="default", color="tab:blue")
    ax_nodes.set_ylabel("classical nodes held")
    ax_nodes.set_title(
        title or f"{Path(report['workflow']).name} on {Path(report['deployment']).name}"
    )
    ax_qpu.plot(*step_curve(qpu), color="tab:red")
    ax_qpu.set_ylabel("QPU tasks running")
    ax_qpu.set_xlabel("seconds since the run started")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
