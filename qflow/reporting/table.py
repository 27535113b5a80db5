"""``qflow report``: a run report as a table per step execution, with totals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qflow.reporting.ledger import REPORT_NAME


class ReportError(ValueError):
    """The file is not a qflow run report."""


def load_report(path: str | Path) -> dict[str, Any]:
    """The report at ``path``, or in ``path`` when it is a run's output directory."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ReportError(
            f"{path}: no such file. Fix: give the path of a {REPORT_NAME} or the --outdir of "
            "the run"
        ) from exc
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read ({exc.strerror}). Fix: check the path") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}). Fix: give a qflow run report"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ReportError(
            f"{path}: not a text file ({exc.reason}). Fix: give a qflow run report"
        ) from exc
    if not isinstance(data, dict) or "steps" not in data or "totals" not in data:
        raise ReportError(
            f"{path}: not a qflow run report (no 'steps'/'totals'). "
            f"Fix: give the {REPORT_NAME} that 'qflow run' wrote"
        )
    return data


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report_table(report: dict[str, Any]) -> Table:
    t0 = report.get("started") or 0.0
    table = Table(
        title=f"{report.get('workflow', '')} on {report.get('deployment', '')}: "
        f"{report.get('status')} in {_fmt(report.get('wall_s'))} s",
        show_footer=True,
    )
    totals = report["totals"]
    columns = [
        ("step", f"{totals['steps']} executions"),
        ("iter", ""),
        ("location", ""),
        ("status", f"{totals['fallbacks']} fallbacks"),
        ("start s", ""),
        ("run s", ""),
        ("wait s", _fmt(totals["queue_wait_s"])),
        ("nodes", ""),
        ("node-s", _fmt(totals["node_seconds"])),
        ("QPU-s", _fmt(totals["qpu_seconds"])),
        ("est s", ""),
        ("actual s", ""),
        ("id", ""),
        ("why", ""),
    ]
    for name, footer in columns:
        table.add_column(name, footer=footer, justify="right" if name.endswith("s") else "left")
    for s in report["steps"]:
        started, ended = s.get("started"), s.get("ended")
        run = ended - started if started is not None and ended is not None else None
        wait = started - s["submitted"] if started is not None else None
        status = s["status"] + (" (fallback)" if s.get("fallback") else "")
        estimate = (s.get("estimate") or {}).get(s.get("location") or "")
        actual = ended - s["submitted"] if ended is not None else None
        table.add_row(
            s["step"],
            "" if s.get("iteration") is None else str(s["iteration"]),
            s.get("location") or "-",
            status,
            _fmt(started - t0 if started is not None else None),
            _fmt(run),
            _fmt(wait),
            str(s.get("nodes", 0)),
            _fmt(s.get("node_seconds")),
            _fmt(s.get("qpu_seconds")),
            _fmt(estimate, 1),
            _fmt(actual, 1),
            s.get("external_id") or "",
            _why(s),
        )
    return table


def _why(step: dict[str, Any]) -> str:
    """Why it failed or fell back (the cause, as recorded end to end)."""
    reasons = [step.get("fallback_reason") if step.get("fallback") else None]
    if step.get("status") in ("failed", "cancelled"):
        reasons.append(step.get("message"))
    return "; ".join(r for r in reasons if r)


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:
        console.width = 200  # a file or a pipe: do not squeeze the table into 80 columns
    console.print(report_table(report))
