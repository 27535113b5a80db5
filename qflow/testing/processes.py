"""Processes started by tests and benchmarks: is one alive, stop it or its tree, by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
"""The source checkout this package runs from (deployments/, tests/data/, workflows/)."""


def compile_sources() -> None:
    """Byte-compile qflow's modules (``qflow/``, ``connectors/``) in the checkout.

    pip compiles what it installs, cwltool included, but not an editable checkout; where
    ``PYTHONDONTWRITEBYTECODE`` is set (these machines set it) every qflow process would
    compile ~60 modules from source at start (0.1-0.2 s). Tests and benchmarks start hundreds
    of them, and the start-up benchmark compares qflow with a compiled cwltool.
    """
    import compileall

    for package in ("qflow", "connectors"):
        compileall.compile_dir(REPO / package, quiet=1)


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM ``proc`` (by its PID), SIGKILL it if it has not exited after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (found through /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    todo, tree = [pid], []
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    for member in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessGroups:
    """Processes started each in a process group of its own, stopped together by group id."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, start_new_session=True, text=True, **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self, grace: float = 15) -> None:
        """SIGTERM to each group we started (e.g. a run and the step commands it started),
        then SIGKILL to what is left after ``grace`` seconds."""
        for proc in self.started:
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.started:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
            self._signal(proc, signal.SIGKILL)  # a step command left in the group, if any

    @staticmethod
    def _signal(proc: subprocess.Popen[str], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the group's id is the pid we started
