"""Progress on stderr while a run goes: a live table on a terminal, one line per event otherwise."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from qflow.reporting.ledger import Ledger, StepRecord


def _label(record: StepRecord) -> str:
    it = f" #{record.iteration}" if record.iteration is not None else ""
    return f"{record.step}{it}"


class Progress:
    """Subscribes to a ledger and shows what runs where."""

    def __init__(self, ledger: Ledger, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.ledger = ledger
        self._lock = threading.Lock()
        self._live: Live | None = None
        ledger.subscribe(self._on_event)

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)
            self._live = None

    def _on_event(self, event: str, record: StepRecord) -> None:
        with self._lock:
            if self._live is not None:
                self._live.update(self._table())
                return
            where = f" on {record.location}" if record.location else ""
            detail = ""
            if event == "ended":
                elapsed = (record.ended or 0) - (record.started or record.submitted)
                detail = f" {record.status} in {elapsed:.2f} s"
                if record.message and record.status != "success":
                    detail += f" ({record.message})"
            if event == "submitted":
                return  # the start line says where; queueing shows as the wait before it
            self.console.print(
                f"[{event}] {_label(record)}{where}{detail}", markup=False, highlight=False
            )

    def _table(self) -> Table:
        records = self.ledger.records()
        done = sum(1 for r in records if r.status not in ("queued", "running"))
        table = Table(title=f"qflow: {done}/{len(records)} step executions finished", expand=False)
        for column in ("step", "location", "state", "elapsed s"):
            table.add_column(column)
        now = time.time()
        for r in records[-12:]:
            end = r.ended if r.ended is not None else now
            begin = r.started if r.started is not None else r.submitted
            table.add_row(_label(r), r.location or "-", r.status, f"{end - begin:.1f}")
        return table
