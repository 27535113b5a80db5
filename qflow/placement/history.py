"""Measured durations that placement by earliest finish estimates from.

Per step and location: how long its executions ran (earlier loop iterations of this run
first, then earlier runs). Per location: how long executions waited in its queue (a Slurm
partition's queue wait) and how long one QPU task took. Earlier runs' figures come from a
small per-site file (``policy.history``, by default under ``$XDG_STATE_HOME/qflow``), merged
back at the end of every run under a lock, keeping the last few figures of each kind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import statistics
import threading
from pathlib import Path

_logger = logging.getLogger("qflow")

KEEP = 20
"""Figures kept per key in the site file."""
RECENT = 3
"""This run's last figures averaged (a loop's iterations drift: the recent ones tell most)."""


def default_history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "qflow" / "history.json"


class History:
    """Durations measured in this run, and in earlier runs of this site."""

    def __init__(self, path: Path | None, workflow: str) -> None:
        self.path = path
        self.workflow = workflow
        self._lock = threading.Lock()
        self._run: dict[str, list[float]] = {}
        self._site = _load(path) if path else {}

    # -- keys -------------------------------------------------------------------------------
    def _step_key(self, step: str, location: str) -> str:
        return f"run|{self.workflow}|{step}|{location}"

    def _add(self, key: str, seconds: float) -> None:
        with self._lock:
            self._run.setdefault(key, []).append(max(0.0, seconds))

    def _expected(self, key: str) -> float | None:
        with self._lock:
            recent = self._run.get(key)
            if recent:
                return statistics.fmean(recent[-RECENT:])
            earlier = self._site.get(key)
        return statistics.median(earlier) if earlier else None

    # -- recording --------------------------------------------------------------------------
    def add_run(self, step: str, location: str, seconds: float) -> None:
        """An execution of ``step`` ran ``seconds`` on ``location`` (its queue excluded)."""
        self._add(self._step_key(step, location), seconds)

    def add_queue(self, location: str, seconds: float) -> None:
        """An execution waited ``seconds`` in ``location``'s own queue before it started."""
        self._add(f"queue|{location}", seconds)

    def add_task(self, location: str, seconds: float) -> None:
        """One task occupied the QPU of ``location`` for ``seconds``."""
        self._add(f"task|{location}", seconds)

    # -- estimates --------------------------------------------------------------------------
    def run_seconds(self, step: str, location: str) -> float | None:
        return self._expected(self._step_key(step, location))

    def queue_seconds(self, location: str) -> float | None:
        return self._expected(f"queue|{location}")

    def task_seconds(self, location: str) -> float | None:
        return self._expected(f"task|{location}")

    # -- the site file ----------------------------------------------------------------------
    def save(self) -> None:
        """Merge this run's figures into the site file (concurrent runs take turns)."""
        if self.path is None or not self._run:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                merged = _load(self.path)
                with self._lock:
                    for key, values in self._run.items():
                        merged[key] = (merged.get(key, []) + values)[-KEEP:]
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"version": 1, "figures": merged}), encoding="utf-8")
                tmp.replace(self.path)
        except OSError as exc:  # the run's result does not depend on it
            _logger.warning("could not update the placement history %s: %s", self.path, exc)


def _load(path: Path) -> dict[str, list[float]]:
    """The site file's figures; a missing, unreadable or damaged file counts as empty."""
    if not path.exists():
        return {}
    try:
        figures = json.loads(path.read_text(encoding="utf-8"))["figures"]
        return {str(k): [float(x) for x in v][-KEEP:] for k, v in figures.items()
                if isinstance(v, list)}  # fmt: skip
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        _logger.warning("ignoring the placement history %s: %s", path, exc)
        return {}
